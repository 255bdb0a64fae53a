import DataStream
@testable import DataStreamBench
import DataStreamCore
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Glibc
import Testing
import UV

/// Runs a load generator to the end on its own loop (bounded: the generator stops by count).
func runBench(port: Int, _ configure: (inout LoadGenerator.Options) -> Void) throws -> (LoadGenerator.Report, BenchContent) {
    let loop = try Loop()
    var options = LoadGenerator.Options(host: "127.0.0.1", port: port)
    configure(&options)
    let generator = LoadGenerator(loop: loop, options: options)
    var report: LoadGenerator.Report?
    try generator.run { report = $0 }
    loop.run()
    try loop.close()
    guard let report else { throw TestError("the run did not finish") }
    return (report, generator.content)
}

struct LoadGeneratorTests {
    @Test(arguments: [LoadGenerator.WireProtocol.seed, .native, .udpNative, .httpPut, .webSocket])
    func everyUploadIsStoredAndVerifies(wire: LoadGenerator.WireProtocol) throws {
        let server = try BackgroundServer()
        let sizes = try SizeDistribution(parsing: "0,10,5000,200KiB")
        let (report, content) = try runBench(port: server.port) {
            $0.wireProtocol = wire
            $0.uploads = 60
            $0.concurrency = 8
            $0.sizes = sizes
            $0.seed = 21
        }
        server.stop()
        #expect(report.completed == 60)
        #expect(report.failed == 0, "\(report.sampleMessages)")
        #expect(report.succeeded == Array(0..<60))
        #expect(report.latency.totalCount == 60)
        let expectedBytes = (0..<60).reduce(UInt64(0)) { $0 + sizes.size(of: UInt64($1), seed: 21) }
        #expect(report.bytes == expectedBytes)
        let v = BenchVerifier.verify(directory: server.directory, content: content, sizes: sizes, confirmed: report.succeeded)
        #expect(v.ok, "\(v.mismatches) missing \(v.missing)")
        #expect(v.verified == 60)
        #expect(v.filesChecked == 60)
    }

    /// The seed's UDP framing has no acknowledgement: the generator counts an upload done once
    /// sent, and only verification of the receiver's directory shows what arrived.
    @Test func udpSeedUploadsArriveAndVerify() throws {
        let server = try BackgroundServer()
        defer { server.stop() }
        let sizes = try SizeDistribution(parsing: "1,1024,1025,5000,100KiB")
        let (report, content) = try runBench(port: server.port) {
            $0.wireProtocol = .udpSeed
            $0.uploads = 20
            $0.concurrency = 4
            $0.sizes = sizes
            $0.seed = 23
        }
        #expect(report.completed == 20)
        #expect(report.failed == 0, "\(report.sampleMessages)")
        #expect(server.eventually { server.storedFiles().count == 20 })
        let v = BenchVerifier.verify(directory: server.directory, content: content, sizes: sizes, confirmed: report.succeeded)
        #expect(v.ok, "\(v.mismatches) missing \(v.missing)")
        #expect(v.verified == 20)
    }

    /// UDP uploads in flight when the generator's once-a-second stall check runs (it crashed
    /// on that once: progress sampled after the check's clock reading).
    @Test func udpUploadsSpanningStallChecksFinish() throws {
        let server = try BackgroundServer()
        defer { server.stop() }
        let (report, _) = try runBench(port: server.port) {
            $0.wireProtocol = .udpNative
            $0.uploads = nil
            $0.duration = 2.2
            $0.concurrency = 2
            $0.sizes = .fixed(8 << 20)
            $0.seed = 24
        }
        #expect(report.completed >= 2)
        #expect(report.failed == 0, "\(report.sampleMessages)")
    }

    @Test func verificationReportsCorruptTruncatedAndMissingFiles() throws {
        let server = try BackgroundServer()
        let sizes = SizeDistribution.fixed(100_000)
        let (report, content) = try runBench(port: server.port) {
            $0.uploads = 10
            $0.concurrency = 4
            $0.sizes = sizes
        }
        server.stop()
        #expect(report.completed == 10)
        let files = server.storedFiles()
        #expect(files.count == 10)
        guard files.count == 10 else { return }
        let dir = server.directory
        // One byte flipped deep inside, one file cut short, one deleted, one foreign file added.
        var bytes = try #require(server.contents(files[0]))
        bytes[77_777] ^= 0x40
        try Data(bytes).write(to: URL(fileURLWithPath: dir + "/" + files[0]))
        truncate(dir + "/" + files[1], 50_000)
        let deletedIndex = try #require(server.contents(files[2]).flatMap { content.index(fromHeader: $0) })
        unlink(dir + "/" + files[2])
        try Data("not a bench file".utf8).write(to: URL(fileURLWithPath: dir + "/notes.txt"))
        let v = BenchVerifier.verify(directory: dir, content: content, sizes: sizes, confirmed: report.succeeded)
        #expect(!v.ok)
        #expect(v.verified == 7)
        #expect(v.mismatches.count == 2)
        #expect(v.mismatches.contains { $0.hasPrefix(files[0]) && $0.contains("differs within bytes") })
        #expect(v.mismatches.contains { $0.hasPrefix(files[1]) && $0.contains("has 50000 bytes, expected 100000") })
        #expect(v.missing.contains(deletedIndex))
        #expect(v.foreign == 1)
    }

    @Test func failuresAreCountedByKind() throws {
        // A token the generator does not have: every native upload is refused.
        let server = try BackgroundServer { $0.token = "secret" }
        let (refused, _) = try runBench(port: server.port) {
            $0.wireProtocol = .native
            $0.uploads = 5
            $0.concurrency = 2
            $0.sizes = .fixed(1000)
        }
        // With the token they go through.
        let (accepted, _) = try runBench(port: server.port) {
            $0.wireProtocol = .native
            $0.uploads = 5
            $0.sizes = .fixed(1000)
            $0.token = "secret"
        }
        server.stop()
        #expect(refused.failed == 5 && refused.completed == 0)
        #expect(refused.failures == ["rejected": 5])
        #expect(accepted.completed == 5 && accepted.failed == 0)

        // Nobody listening: connection failures, and the run still ends.
        // A port nobody listens on: a TCP socket bound to a free port, then closed.
        let (probe, closedPort) = boundLoopbackSocket(SOCK_STREAM)
        close(probe)
        let (unreachable, _) = try runBench(port: closedPort) {
            $0.uploads = 6
            $0.concurrency = 3
        }
        #expect(unreachable.failures == ["connect": 6])
        #expect(unreachable.completed == 0)
    }

    /// Seed framing's only confirmation is the receiver's close: a receiver that refuses an
    /// upload (too large) and closes on unread bytes resets the connection, which the
    /// generator counts as a failure, never as done; an upload that fits still succeeds.
    @Test func aSeedUploadTheReceiverRefusesIsAFailure() throws {
        let server = try BackgroundServer { $0.maxFileSize = 100_000 }
        let (report, _) = try runBench(port: server.port) {
            $0.uploads = 6
            $0.concurrency = 3
            $0.sizes = .fixed(4 << 20)
        }
        let (fits, _) = try runBench(port: server.port) {
            $0.uploads = 3
            $0.sizes = .fixed(50_000)
        }
        server.stop()
        #expect(report.completed == 0)
        #expect(report.failed == 6)
        #expect(report.failures.keys.allSatisfy { $0 == "connection" || $0 == "connect" }, "\(report.failures)")
        #expect(fits.completed == 3 && fits.failed == 0)
    }

    @Test func aStalledReceiverFailsTheUploadsByTimeout() throws {
        // A listener that never accepts: connections complete in its backlog, then the socket
        // buffers fill and nothing moves.
        let (fd, port) = boundLoopbackSocket(SOCK_STREAM)
        defer { close(fd) }
        #expect(listen(fd, 16) == 0)
        let (report, _) = try runBench(port: port) {
            $0.uploads = 2
            $0.concurrency = 2
            $0.sizes = .fixed(256 << 20)
            $0.stallTimeout = 1
        }
        #expect(report.failures == ["timeout": 2])
        #expect(report.completed == 0)
    }

    /// Open model: every scheduled upload runs and is counted; the corrected latency (from
    /// when each was due) is never below the uncorrected one, percentile by percentile; the
    /// schedule's lag is reported. No assertion on time itself.
    @Test func anOpenModelRunStartsEveryUploadAndCorrectsItsLatency() throws {
        let server = try BackgroundServer()
        let (report, content) = try runBench(port: server.port) {
            $0.uploads = 200
            $0.rate = 2_000
            $0.concurrency = 2  // few: uploads wait for a place, so the correction matters
            $0.sizes = .fixed(8_000)
        }
        server.stop()
        #expect(report.completed == 200 && report.failed == 0, "\(report.sampleMessages)")
        let corrected = try #require(report.correctedLatency)
        #expect(corrected.totalCount == 200 && report.latency.totalCount == 200)
        for q in [50.0, 90.0, 99.0, 100.0] {
            #expect(corrected.valueAtPercentile(q) >= report.latency.valueAtPercentile(q), "p\(q)")
        }
        #expect(report.lateStarts <= 200)
        let v = BenchVerifier.verify(directory: server.directory, content: content, sizes: .fixed(8_000), confirmed: report.succeeded)
        #expect(v.ok && v.verified == 200)
        // The closed model reports no corrected latency.
        let closed = try BackgroundServer()
        let (plain, _) = try runBench(port: closed.port) { $0.uploads = 5; $0.sizes = .fixed(100) }
        closed.stop()
        #expect(plain.correctedLatency == nil)
    }

    /// Threads split a run: every upload index once, the connections and the rate shared out.
    @Test func aRunSplitOverThreadsSharesEverythingOnce() {
        var o = LoadGenerator.Options(host: "127.0.0.1", port: 1)
        o.uploads = 10
        o.concurrency = 5
        o.rate = 300
        let shares = (0..<3).map { LoadGroup.share(of: o, thread: $0, of: 3) }
        var indices: [UInt64] = []
        for s in shares { indices += (0..<(s.uploads ?? 0)).map { s.indexOffset + s.indexStride * $0 } }
        #expect(indices.sorted() == Array(0..<10))
        #expect(shares.map(\.uploads) == [4, 3, 3])
        #expect(shares.map(\.concurrency).reduce(0, +) == 5)
        let rates: [Double] = shares.compactMap(\.rate)
        #expect(rates == [100, 100, 100])
        // Thread k's uploads fall due where they would in one schedule: k/R later.
        let offsets: [Double] = shares.map(\.scheduleOffset)
        let expected: [Double] = [0, 1.0 / 300, 2.0 / 300]
        #expect(offsets == expected)
    }

    /// The merged report is the sum of its parts.
    @Test func theMergedReportIsTheSumOfItsParts() throws {
        let server = try BackgroundServer()
        var parts: [LoadGenerator.Report] = []
        for k in 0..<2 {
            var o = LoadGenerator.Options(host: "127.0.0.1", port: server.port)
            o.uploads = 31
            o.concurrency = 4
            o.sizes = .fixed(3_000)
            parts.append(try runBench(port: server.port) { $0 = LoadGroup.share(of: o, thread: k, of: 2) }.0)
        }
        server.stop()
        let merged = LoadGenerator.Report.merged(parts)
        #expect(merged.completed == parts[0].completed + parts[1].completed)
        #expect(merged.completed == 31)
        #expect(merged.bytes == parts[0].bytes + parts[1].bytes)
        #expect(merged.latency.totalCount == parts[0].latency.totalCount + parts[1].latency.totalCount)
        #expect(merged.latency.max == max(parts[0].latency.max, parts[1].latency.max))
        #expect(merged.seconds == max(parts[0].seconds, parts[1].seconds))
        #expect(merged.succeeded == (parts[0].succeeded + parts[1].succeeded).sorted())
        #expect(merged.succeeded == Array(0..<31))
    }

    /// The uploads in flight, through additions and removals in any order: each is found at its
    /// slot, removing one twice or one never added changes nothing, and the last goes empty.
    @Test func inFlightTransfersKeepEachAtItsSlot() {
        final class Transfer: BenchTransfer {
            let index: UInt64
            var activeSlot = -1
            let startedAt: UInt64 = 0, dueAt: UInt64 = 0, lastProgress: UInt64 = 0
            init(_ index: UInt64) { self.index = index }
            func fail(_ kind: LoadGenerator.FailureKind, _ message: String) {}
        }
        func check(_ set: InFlightTransfers, _ expected: Set<UInt64>) {
            #expect(Set(set.all.map(\.index)) == expected)
            #expect(set.count == expected.count)
            for (i, t) in set.all.enumerated() { #expect(t.activeSlot == i) }
        }
        var set = InFlightTransfers()
        let t = (0..<6).map { Transfer(UInt64($0)) }
        for x in t.prefix(5) { set.add(x) }
        check(set, [0, 1, 2, 3, 4])
        set.remove(t[1])  // the last moves into its place
        #expect(t[1].activeSlot == -1)
        check(set, [0, 2, 3, 4])
        set.remove(t[1])
        set.remove(t[5])
        check(set, [0, 2, 3, 4])
        set.remove(t[3])  // now the last
        check(set, [0, 2, 4])
        set.add(t[5])
        set.remove(t[0])
        check(set, [2, 4, 5])
        for x in [t[2], t[4], t[5]] { set.remove(x) }
        check(set, [])
        #expect(set.isEmpty)
    }

    /// A run on two threads stores and verifies every upload, as one thread would.
    @Test func aRunOnTwoThreadsStoresEveryUpload() throws {
        let server = try BackgroundServer()
        var o = LoadGenerator.Options(host: "127.0.0.1", port: server.port)
        o.uploads = 101
        o.concurrency = 6
        o.sizes = try SizeDistribution(parsing: "1KiB-40KiB")
        o.seed = 33
        let (report, content) = try LoadGroup.run(o, threads: 2)
        server.stop()
        #expect(report.completed == 101 && report.failed == 0, "\(report.sampleMessages)")
        #expect(report.succeeded == Array(0..<101))
        let v = BenchVerifier.verify(directory: server.directory, content: content, sizes: o.sizes, confirmed: report.succeeded)
        #expect(v.ok && v.verified == 101)
    }

    /// The picture of a run is well-formed SVG with a latency curve per histogram (two in an
    /// open-model run) and the throughput of each second, drawn inside the plot.
    @Test func theReportPictureDrawsTheLatencyCurvesAndTheThroughput() throws {
        let server = try BackgroundServer()
        let (report, _) = try runBench(port: server.port) {
            $0.uploads = 300
            $0.rate = 3_000
            $0.concurrency = 4
            $0.sizes = .fixed(2_000)
        }
        server.stop()
        #expect(report.timeline.last?.completed == 300)
        let svg = BenchChart.svg(report, title: "a <test> & run")
        let parsed = XMLParser(data: Data(svg.utf8))
        #expect(parsed.parse(), "not well-formed: \(String(describing: parsed.parserError))")
        #expect(svg.components(separatedBy: "class=\"latency\"").count - 1 == 2)
        #expect(svg.components(separatedBy: "class=\"throughput\"").count - 1 == 1)
        #expect(svg.contains("a &lt;test&gt; &amp; run"))
        // Every point lies inside the picture.
        for polyline in svg.components(separatedBy: "points=\"").dropFirst() {
            for point in polyline.prefix(while: { $0 != "\"" }).split(separator: " ") {
                let xy = point.split(separator: ",").compactMap { Double($0) }
                #expect(xy.count == 2 && xy[0] >= 70 && xy[0] <= 700 && xy[1] >= 40 && xy[1] <= 630, "\(point)")
            }
        }
    }

    @Test func aDurationEndsTheRun() throws {
        let server = try BackgroundServer()
        let (report, _) = try runBench(port: server.port) {
            $0.uploads = nil
            $0.duration = 0.5
            $0.concurrency = 4
            $0.sizes = .fixed(10_000)
        }
        server.stop()
        #expect(report.completed > 0)
        #expect(report.failed == 0)
    }
}
