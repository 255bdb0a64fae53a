import DataStream
import DataStreamCore
import Foundation
import Glibc
import Testing

/// Two servers on one target directory, as two processes sharing it would be: a partial's lock
/// (an open file description's) conflicts between two opens in one process just as between two
/// processes, so the cross-process rules are tried here without a process of their own. (The
/// same with real processes, kill -9 included: scripts/faults/shared-dir.py.)
struct SharedDirectoryTests {
    /// An upload one server is receiving is busy on the other; once its connection drops, the
    /// other resumes it from what the first wrote and stores it; announced again to the first,
    /// it is answered from the receipt: stored once.
    @Test func anUploadHeldByOneServerIsBusyOnTheOtherThenResumesThereOnce() throws {
        let directory = BackgroundServer.temporaryDirectory()
        let a = try BackgroundServer(directory: directory)
        let b = try BackgroundServer(directory: directory)
        defer { a.stop(); b.stop() }
        let data = content(70, count: 3_000_000)
        let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .xxh3_128, name: "shared.bin")
        var first: BlockingClient? = try BlockingClient(port: a.port)
        try first?.handshake()
        #expect(try first?.announce(header) == 0)
        first?.send(Array(data[0..<1_000_000]))
        #expect(a.waitForStatistics { $0.bytesReceived >= 1_000_000 - 512 * 1024 })

        let other = try BlockingClient(port: b.port)
        try other.handshake()
        #expect { try other.announce(header) } throws: { "\($0)".contains("in use by another connection") }
        #expect(b.storedFiles().isEmpty && b.partials() == [header.uploadID.hex + ".meta", header.uploadID.hex + ".part"])

        first = nil  // dropped: the first server keeps what it wrote and lets the partial go
        let resumed = b.resume(header, data)
        #expect(resumed?.status == .stored)
        #expect((resumed?.offset ?? 0) > 0, "resumed at \(resumed?.offset ?? 0)")
        #expect(b.contents("shared.bin").map { $0 == data } == true)
        let again = a.resume(header, data)
        #expect(again?.status == .stored && again?.offset == UInt64(data.count))
        #expect(a.storedFiles() == ["shared.bin"])
        #expect(a.eventually { a.partials().isEmpty })
    }

    /// A server starting on a directory another server is using leaves the partial that one is
    /// writing alone, however old the age limit says it is; it resumes it once it is let go.
    @Test func aServerStartingBesideAnotherKeepsThePartialItIsWriting() throws {
        let directory = BackgroundServer.temporaryDirectory()
        let a = try BackgroundServer(directory: directory)
        defer { a.stop() }
        let data = content(71, count: 2_000_000)
        let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .sha256, name: "beside.bin")
        var client: BlockingClient? = try BlockingClient(port: a.port)
        try client?.handshake()
        #expect(try client?.announce(header) == 0)
        client?.send(Array(data[0..<700_000]))
        #expect(a.waitForStatistics { $0.bytesReceived >= 700_000 - 512 * 1024 })
        // Not written to for an hour as far as its time says, so stale to the age limit, but held.
        var times = [timeval(tv_sec: time(nil) - 3_600, tv_usec: 0), timeval(tv_sec: time(nil) - 3_600, tv_usec: 0)]
        for name in a.partials() { #expect(utimes(directory + "/.datastream/partial/" + name, &times) == 0) }
        let b = try BackgroundServer(directory: directory) { $0.partialMaxAge = 60 }
        defer { b.stop() }
        #expect(b.partials() == [header.uploadID.hex + ".meta", header.uploadID.hex + ".part"])
        client = nil
        let resumed = b.resume(header, data)
        #expect(resumed?.status == .stored && (resumed?.offset ?? 0) > 0)
        #expect(b.contents("beside.bin").map { $0 == data } == true)
    }

    /// Two servers storing different uploads under one name at once: each gets its own name,
    /// neither replaces the other.
    @Test func oneNameFromTwoServersAtOnceGivesTwoFilesNeitherReplaced() throws {
        let directory = BackgroundServer.temporaryDirectory()
        let a = try BackgroundServer(directory: directory)
        let b = try BackgroundServer(directory: directory)
        defer { a.stop(); b.stop() }
        let payloads = (0..<8).map { content(80 + $0, count: 50_000 + $0) }
        let group = DispatchGroup()
        for (i, data) in payloads.enumerated() {
            let port = i % 2 == 0 ? a.port : b.port
            group.enter()
            DispatchQueue.global().async {
                defer { group.leave() }
                let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .xxh3_128, name: "same.bin")
                guard let client = try? BlockingClient(port: port), (try? client.handshake()) != nil,
                      (try? client.announce(header)) == 0 else { return }
                client.send(data)
                client.send(Wire.end(digest: Digests.compute(header.digest, data)))
                _ = try? client.result()
            }
        }
        #expect(group.wait(timeout: .now() + 30) == .success)
        let stored = a.storedFiles()
        #expect(stored.count == payloads.count, "\(stored)")
        let contents = Set(stored.compactMap { a.contents($0) })
        #expect(contents == Set(payloads))
    }
}
