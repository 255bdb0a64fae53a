import DataStreamCore
import Testing

@Suite struct AbuseGuardsTests {
    let a: [UInt8] = [4, 127, 0, 0, 1], b: [UInt8] = [4, 127, 0, 0, 2]
    let second: UInt64 = 1_000_000_000

    @Test func aFewFailuresAreFreeThenEachDoublesTheWaitUpToTheCap() {
        var g = AuthenticationBackoff()
        for i in 0..<3 {
            g.failed(a, now: UInt64(i))
            #expect(g.wait(for: a, now: UInt64(i)) == nil)
        }
        g.failed(a, now: 10)
        #expect(g.wait(for: a, now: 10) == second)
        #expect(g.wait(for: a, now: 10 + second) == nil)
        g.failed(a, now: 10 + second)
        #expect(g.wait(for: a, now: 10 + second) == 2 * second)
        var t = 10 + second
        for _ in 0..<20 { t += 1; g.failed(a, now: t) }
        #expect(g.wait(for: a, now: t) == 60 * second)
        // Another address is not held back.
        #expect(g.wait(for: b, now: t) == nil)
        // Quiet for the forget time: the count starts again.
        t += 601 * second
        g.failed(a, now: t)
        #expect(g.wait(for: a, now: t) == nil)
    }

    @Test func theAddressesRememberedAreBounded() {
        var policy = AuthenticationBackoff.Policy()
        policy.maxAddresses = 3
        var g = AuthenticationBackoff(policy: policy)
        for n: UInt8 in 1...10 { g.failed([n], now: UInt64(n)) }
        #expect(g.count <= 3)
    }

    @Test func aFloodOfOneKindOfLineIsCutAndCounted() {
        var limit = LogRateLimit<String>(perWindow: 5, window: second)
        var written = 0
        for i in 0..<2_000 where limit.line("refused", now: UInt64(i) * 100_000) != .suppress { written += 1 }
        // 2,000 lines over 0.2 s: five written.
        #expect(written == 5)
        #expect(limit.line("other", now: 0) == .write(suppressed: 0))
        // The next window's first line says how many were left out.
        #expect(limit.line("refused", now: second + 1) == .write(suppressed: 1_995))
        #expect(limit.line("refused", now: second + 2) == .write(suppressed: 0))
    }
}
