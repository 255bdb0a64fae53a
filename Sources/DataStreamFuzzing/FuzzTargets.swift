import DataStreamCore

/// The parsers that face the network, as fuzz targets: each takes arbitrary bytes, drives the
/// code as a well-behaved driver would, and traps (`precondition`) when an invariant breaks —
/// which libFuzzer reports as a crash. Used by the libFuzzer executables in `fuzz/` and by the
/// test suite, which replays the seed and regression corpora in `fuzz/corpus/TARGET/`.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// The native TCP protocol: the connection state machine fed frames in arbitrary chunks,
    /// with every file operation answered; also each frame decoder on its own.
    case nativeFrames = "native-frames"
    /// The seed TCP framing (size digits, then bytes): the same machine, input starting with digits.
    case seedProtocol = "seed-protocol"
    /// The file name sanitiser: a name it accepts is one safe path component.
    case names
    /// UDP datagrams: classification, every decoder, and the seed UDP session machine.
    case udpDatagrams = "udp-datagrams"

    /// Runs one input.
    public func run(_ data: UnsafeRawBufferPointer) {
        switch self {
        case .nativeFrames: FuzzTarget.machine(data, seedFirst: false)
        case .seedProtocol: FuzzTarget.machine(data, seedFirst: true)
        case .names: FuzzTarget.names(data)
        case .udpDatagrams: FuzzTarget.udp(data)
        }
    }

    // MARK: - The connection machine

    /// A small deterministic generator for chunk sizes and answers, seeded by the input itself.
    private struct Choices {
        var state: UInt64
        mutating func next(_ bound: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(max(bound, 1)))
        }
    }

    private static func machine(_ data: UnsafeRawBufferPointer, seedFirst: Bool) {
        guard !data.isEmpty else { return }
        let control = data[0]
        let maxFileSize: UInt64 = 1 << 20
        var m = ConnectionStateMachine(configuration: .init(token: control & 0x80 != 0 ? "fuzz" : nil, maxFileSize: maxFileSize, maxNameLength: 64))
        var choices = Choices(state: UInt64(control) &+ UInt64(data.count))
        var input = Array(data.dropFirst())
        if seedFirst { input.insert(UInt8(ascii: "0") + UInt8(control % 10), at: 0) }
        var fileBytes: UInt64 = 0
        var announced: FileHeader?

        // Carries out an action as the driver would; false once the connection is closed.
        func handle(_ action: ConnectionStateMachine.Action) -> Bool {
            switch action {
            case .none, .wait, .send:
                return true
            case .startSeedUpload(let declared):
                precondition(declared <= maxFileSize, "seed size \(declared) over the limit")
                fileBytes = 0
                return true
            case .finishSeedUpload(let prefix, let size):
                precondition(UInt64(prefix.count) + fileBytes == size, "seed file of \(size) bytes from \(prefix.count) digits and \(fileBytes) data bytes")
                precondition(size <= maxFileSize)
                return handle(choices.next(4) == 0 ? m.uploadFailed(.storageFailed(reason: "fuzz")) : m.seedStored())
            case .openUpload(let header):
                precondition(header.size <= maxFileSize)
                checkName(Array(header.name.utf8), accepted: header.name)
                announced = header
                fileBytes = 0
                switch choices.next(5) {
                case 0: return handle(m.uploadOpenFailed(.uploadBusy))
                case 1: return handle(m.uploadOpened(heldBytes: UInt64(choices.next(Int(clamping: header.size) + 1))))
                default: return handle(m.uploadOpened(heldBytes: 0))
                }
            case .verifyUpload:
                precondition(announced != nil)
                return handle(choices.next(3) == 0 ? m.uploadFailed(.storageFailed(reason: "fuzz")) : m.digestComputed([UInt8](repeating: 0, count: 16)))
            case .commitUpload:
                return handle(m.uploadCommitted(storedName: "stored.bin"))
            case .discardUpload:
                return true
            case .close:
                return false
            }
        }

        var at = 0
        while at < input.count {
            let chunk = 1 + choices.next(min(input.count - at, 300))
            var slice = input[at..<(at + chunk)]
            at += chunk
            var stalls = 0
            while !slice.isEmpty {
                let step = slice.withUnsafeBytes { m.bytesReceived($0) }
                precondition(step.consumed <= slice.count && step.fileBytes <= step.consumed, "consumed \(step.consumed) of \(slice.count)")
                fileBytes += UInt64(step.fileBytes)
                if let h = announced { precondition(fileBytes <= h.size, "\(fileBytes) file bytes for \(h.size) announced") }
                slice = slice.dropFirst(step.consumed)
                if !handle(step.action) { return }
                stalls = step.consumed == 0 ? stalls + 1 : 0
                precondition(stalls < 4, "no progress in state with \(slice.count) bytes pending")
            }
        }
        _ = handle(m.endOfStream())
    }

    // MARK: - Names

    private static func checkName(_ raw: [UInt8], accepted name: String) {
        precondition(!name.isEmpty && name != "." && name != "..", "name \(name)")
        precondition(!name.hasPrefix("."), "hidden or relative name \(name)")
        precondition(!name.contains("/") && !name.contains("\\") && !name.contains("\0"), "separator in \(name)")
        precondition(!name.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }, "control character in \(name)")
        precondition(name.utf8.count <= raw.count * 3 && name.utf8.count <= 255, "name grew to \(name.utf8.count) bytes")
    }

    private static func names(_ data: UnsafeRawBufferPointer) {
        let raw = Array(data)
        guard let name = try? NamePolicy.sanitise(raw) else { return }
        checkName(raw, accepted: name)
        precondition((try? NamePolicy.sanitise(Array(name.utf8))) == name, "sanitising \(name) again changed it")
        for attempt in [1, 7, 12345] {
            let candidate = NamePolicy.candidate(name, attempt: attempt)
            checkName(Array(candidate.utf8), accepted: candidate)
        }
    }

    // MARK: - UDP

    private static func udp(_ data: UnsafeRawBufferPointer) {
        _ = UDPWire.classify(data)
        if let size = UDPWire.seedSize(data) { precondition(data.count <= 20 && size < UInt64.max) }
        _ = UDPWire.isSeedEnd(data)
        _ = UDPWire.chunkIndex(data)
        if let h = UDPWire.header(data) {
            var encoded: [UInt8] = []
            UDPWire.encodeHeader(h, into: &encoded)
            precondition(encoded.count <= data.count, "a header re-encodes longer than it was read")
        }
        _ = UDPWire.decodeInitial(data)
        _ = UDPWire.decodeCookie(data)
        if UDPWire.decodeStart(data) != nil, let name = UDPWire.startNameBytes(data), let clean = try? NamePolicy.sanitise(name) {
            checkName(name, accepted: clean)
        }
        _ = UDPWire.decodeAccept(data)
        _ = UDPWire.decodeStatus(data)
        _ = UDPWire.decodeFinish(data)
        _ = UDPWire.decodeAbort(data)
        // The seed UDP session fed the input as a run of datagrams (sizes from the input).
        var session = SeedUDPSession(declaredSize: UInt64(data.first ?? 0) * 700, now: 0)
        _ = session.started()
        var at = 1, now: UInt64 = 0
        while at < data.count {
            let n = min(Int(data[at]) * 5, data.count - at)
            now += 1000
            _ = session.datagram(count: n, isEndMarker: n == 3 && data[at] & 1 == 1, now: now)
            at += max(n, 1)
        }
        _ = session.tick(now: now + 60_000_000, timeout: 1_000_000)
    }
}
