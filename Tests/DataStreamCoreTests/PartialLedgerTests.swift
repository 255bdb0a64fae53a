import DataStreamCore
import Testing

@Suite struct PartialLedgerTests {
    let a: [UInt8] = [127, 0, 0, 1], b: [UInt8] = [127, 0, 0, 2]
    func id(_ n: UInt8) -> UploadID { UploadID(bytes: [UInt8](repeating: n, count: 16)) }

    @Test func anAddressIsCappedInCountAndOthersAreNot() {
        var limits = PartialLedger.Limits()
        limits.perAddress = 2
        var l = PartialLedger(limits: limits)
        l.add(id(1), owner: a, bytes: 0)
        #expect(l.admit(owner: a) == .admit)
        l.add(id(2), owner: a, bytes: 0)
        guard case .refuse(let reason) = l.admit(owner: a) else { Issue.record("admitted past the cap"); return }
        #expect(reason.contains("holds 2 unfinished uploads") && reason.contains("--max-partials-per-address"))
        #expect(l.admit(owner: b) == .admit)
        l.remove(id(1))
        #expect(l.admit(owner: a) == .admit)
        #expect(l.holdings(of: a) == (1, 0))
    }

    @Test func bytesCountWhatEachPartialHeldWhenLetGo() {
        var limits = PartialLedger.Limits()
        limits.bytesPerAddress = 1000
        limits.totalBytes = 1500
        var l = PartialLedger(limits: limits)
        l.add(id(1), owner: a, bytes: 0)
        l.held(id(1), bytes: 600)
        #expect(l.admit(owner: a) == .admit)
        l.add(id(2), owner: a, bytes: 0)
        l.held(id(2), bytes: 400)
        #expect(l.holdings(of: a) == (2, 1000))
        #expect(l.admit(owner: a) != .admit)
        #expect(l.admit(owner: b) == .admit)
        l.add(id(3), owner: b, bytes: 500)
        #expect(l.totalBytes == 1500)
        guard case .refuse(let reason) = l.admit(owner: b) else { Issue.record("admitted past the total"); return }
        #expect(reason.contains("--max-partial-bytes"))
        // Resumed and let go again with more: the bytes are replaced, not added.
        l.held(id(1), bytes: 700)
        #expect(l.holdings(of: a) == (2, 1100))
        l.remove(id(1)); l.remove(id(2)); l.remove(id(3))
        #expect(l.count == 0 && l.totalBytes == 0 && l.holdings(of: a) == (0, 0))
    }

    @Test func theServerIsCappedInCountAndZeroMeansNoCap() {
        var limits = PartialLedger.Limits()
        limits.perAddress = 0
        limits.bytesPerAddress = 0
        limits.total = 3
        var l = PartialLedger(limits: limits)
        for n: UInt8 in 1...3 { l.add(id(n), owner: [n], bytes: UInt64(n) << 40) }
        guard case .refuse(let reason) = l.admit(owner: [9]) else { Issue.record("admitted past the total"); return }
        #expect(reason.contains("--max-partials)"))
        l.remove(id(2))
        #expect(l.admit(owner: [9]) == .admit)
        // Added twice (found at start-up, then made again): counted once.
        l.add(id(1), owner: [1], bytes: 5)
        #expect(l.count == 2)
    }
}

@Suite struct MismatchedPartialTests {
    @Test func onlyTheBytesTheFailingConnectionAddedGo() {
        #expect(MismatchedPartial.decide(heldAtOpen: 100, heldNow: 2_000) == .rollBack(to: 100))
        // Nothing held before: nothing of anyone else's to keep.
        #expect(MismatchedPartial.decide(heldAtOpen: 0, heldNow: 2_000) == .discard)
        // Nothing added: the bytes held before are the wrong ones.
        #expect(MismatchedPartial.decide(heldAtOpen: 2_000, heldNow: 2_000) == .discard)
        // What an upload event tells the host: resumable only when something is kept.
        #expect(MismatchedPartial.decide(heldAtOpen: 100, heldNow: 2_000).keepsPartial)
        #expect(!MismatchedPartial.decide(heldAtOpen: 0, heldNow: 2_000).keepsPartial)
    }
}
