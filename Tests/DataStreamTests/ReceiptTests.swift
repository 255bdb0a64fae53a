import DataStream
import DataStreamCore
import Foundation
import Testing

/// A native upload announced again after it was stored (its RESULT lost to a crash or a dropped
/// connection, or the same file sent twice) is answered with the name it was stored under, not
/// stored a second time, as long as the file under that name still holds those bytes.
struct ReceiptTests {
    /// Stores `data` under `header` over one connection; returns the RESULT.
    private func upload(_ header: FileHeader, _ data: [UInt8], port: Int, expectOffset: UInt64 = 0) throws -> UploadResult {
        let client = try BlockingClient(port: port)
        try client.handshake()
        let offset = try client.announce(header)
        #expect(offset == expectOffset)
        client.send(Array(data[Int(offset)...]))
        client.send(Wire.end(digest: Digests.compute(header.digest, data)))
        let result = try client.result()
        client.send(Wire.bye())
        _ = client.readUntilEOF()
        return result
    }

    @Test func uploadSentAgainAfterItWasStoredGetsItsNameNotASecondCopy() throws {
        let directory = BackgroundServer.temporaryDirectory()
        let data = content(50, count: 300_000)
        let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .sha256, name: "once.bin")
        let server = try BackgroundServer(directory: directory)
        #expect(try upload(header, data, port: server.port).storedName == "once.bin")
        // Announced again: READY at the end (nothing to send), then END, then the same name.
        let again = try upload(header, data, port: server.port, expectOffset: UInt64(data.count))
        #expect(again.status == .stored)
        #expect(again.storedName == "once.bin")
        #expect(again.digest == Digests.compute(.sha256, data))
        server.stop()
        #expect(server.statistics.uploadsStored == 1)
        #expect(server.statistics.uploadsAlreadyStored == 1)
        #expect(server.storedFiles() == ["once.bin"])
        #expect(server.contents("once.bin") == data)
        #expect(server.partials().isEmpty)
        #expect(server.receipts() == [header.uploadID.hex + ".done"])

        // The receipt outlives the process.
        let restarted = try BackgroundServer(directory: directory)
        defer { restarted.stop() }
        #expect(try upload(header, data, port: restarted.port, expectOffset: UInt64(data.count)).storedName == "once.bin")
        #expect(restarted.storedFiles() == ["once.bin"])

        // The sender (which derives the id from the file's path, size and time) likewise.
        let path = writeTemporaryFile(data, name: "twice.bin")
        let first = try sendFiles([path], port: restarted.port)
        let second = try sendFiles([path], port: restarted.port)
        #expect(first.map(\.storedName) == ["twice.bin"])
        #expect(second.map(\.succeeded) == [true])
        #expect(second.map(\.storedName) == ["twice.bin"])
        #expect(restarted.storedFiles() == ["once.bin", "twice.bin"])
    }

    @Test func overReliableUDPTooAndAcrossTransports() throws {
        let server = try BackgroundServer()
        let data = content(57, count: 2_000_000 + 5)
        let path = writeTemporaryFile(data, name: "udp-twice.bin")
        let (first, _) = try sendUDP([path], port: server.port)
        let (second, secondStats) = try sendUDP([path], port: server.port)
        // The same file over TCP is the same upload (the id comes from the file, not the transport).
        let third = try sendFiles([path], port: server.port)
        server.stop()
        #expect(first.map(\.storedName) == ["udp-twice.bin"])
        #expect(second.map(\.succeeded) == [true], "\(second.map(\.message))")
        #expect(second.map(\.storedName) == ["udp-twice.bin"])
        #expect(secondStats.datagramsSent < 50, "sent \(secondStats.datagramsSent) datagrams for a file already stored")
        #expect(third.map(\.storedName) == ["udp-twice.bin"])
        #expect(server.storedFiles() == ["udp-twice.bin"])
        #expect(server.contents("udp-twice.bin") == data)
        #expect(server.statistics.uploadsStored == 1)
        #expect(server.statistics.uploadsAlreadyStored == 2)
    }

    /// A disk with no room for a new upload still answers one stored before (it needs none),
    /// over TCP and UDP; a new one is refused as disk full.
    @Test func aStoredUploadIsAnsweredEvenWhenTheDiskHasNoRoomForANewOne() throws {
        let directory = BackgroundServer.temporaryDirectory()
        let data = content(58, count: 40_000)
        let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .xxh3_128, name: "full.bin")
        let viaUDP = writeTemporaryFile(content(59, count: 30_000), name: "full-udp.bin")
        let roomy = try BackgroundServer(directory: directory)
        #expect(try upload(header, data, port: roomy.port).storedName == "full.bin")
        #expect(try sendUDP([viaUDP], port: roomy.port).0.map(\.storedName) == ["full-udp.bin"])
        roomy.stop()

        let full = try BackgroundServer(directory: directory) { $0.minFreeSpace = UInt64.max / 4 }
        defer { full.stop() }
        #expect(try upload(header, data, port: full.port, expectOffset: UInt64(data.count)).storedName == "full.bin")
        let (again, _) = try sendUDP([viaUDP], port: full.port)
        #expect(again.map(\.succeeded) == [true], "\(again.map(\.message))")
        #expect(again.map(\.storedName) == ["full-udp.bin"])
        // Anything new: refused at its start.
        let client = try BlockingClient(port: full.port)
        try client.handshake()
        client.send(Wire.file(FileHeader(uploadID: .random(), size: 10, digest: .xxh3_128, name: "new.bin")))
        let refused = try Wire.decodeResult(try #require(client.readFrame()).payload)
        #expect(refused.status == .storageFailed)
        #expect(refused.message.contains("available"), "\(refused.message)")
        let (newUDP, _) = try sendUDP([writeTemporaryFile(content(60, count: 1000), name: "new-udp.bin")], port: full.port)
        #expect(newUDP.map(\.succeeded) == [false])
        #expect(full.storedFiles() == ["full-udp.bin", "full.bin"])
    }

    @Test func aStoredFileThatWasRemovedOrReplacedIsStoredAgain() throws {
        let server = try BackgroundServer()
        defer { server.stop() }
        let data = content(51, count: 70_000)
        let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .xxh3_128, name: "kept.bin")
        #expect(try upload(header, data, port: server.port).storedName == "kept.bin")

        // Removed: the receipt no longer answers, the whole file comes again.
        unlink(server.directory + "/kept.bin")
        #expect(try upload(header, data, port: server.port).storedName == "kept.bin")
        #expect(server.contents("kept.bin") == data)

        // Replaced by another file of the same size under that name (which may well get the
        // old file's inode number): not this upload any more.
        let other = content(52, count: data.count)
        unlink(server.directory + "/kept.bin")
        #expect(FileManager.default.createFile(atPath: server.directory + "/kept.bin", contents: Data(other)))
        let result = try upload(header, data, port: server.port)
        #expect(result.storedName == "kept-1.bin")
        #expect(server.contents("kept.bin") == other)
        #expect(server.contents("kept-1.bin") == data)
        #expect(server.storedFiles() == ["kept-1.bin", "kept.bin"])

        // Changed in place, same size: likewise.
        let handle = FileHandle(forWritingAtPath: server.directory + "/kept-1.bin")!
        handle.write(Data([data[0] ^ 1]))
        handle.closeFile()
        #expect(try upload(header, data, port: server.port).storedName == "kept-2.bin")
        #expect(server.contents("kept-2.bin") == data)
    }

    /// Someone who learned a stored upload's id cannot undo it (issue 21, item 4): other bytes
    /// under the same header get digestMismatch, another header gets a refusal that tells
    /// nothing of the stored upload, and either way the receipt stays, so the owner's resend is
    /// answered with its name instead of stored twice.
    @Test func anotherFileUnderAStoredIdIsRefusedAndTheOwnersReceiptStays() throws {
        let server = try BackgroundServer()
        defer { server.stop() }
        let data = content(53, count: 10_000), changed = content(54, count: 10_000)
        let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .sha256, name: "same-id.bin")
        #expect(try upload(header, data, port: server.port).storedName == "same-id.bin")
        // Same id, size and name, other bytes: the digests differ, nothing is claimed stored.
        let client = try BlockingClient(port: server.port)
        try client.handshake()
        #expect(try client.announce(header) == UInt64(data.count))
        client.send(Wire.end(digest: Digests.compute(.sha256, changed)))
        let refused = try client.result()
        #expect(refused.status == .digestMismatch)
        #expect(refused.storedName.isEmpty)
        // Same id, another header: refused without the stored upload's size, digest or name.
        let other = FileHeader(uploadID: header.uploadID, size: 7, digest: .xxh3_128, name: "probe.bin")
        let probe = try BlockingClient(port: server.port)
        try probe.handshake()
        probe.send(Wire.file(other))
        let answer = try probe.result()
        #expect(answer.status == .rejected)
        #expect(!answer.message.contains("10000") && !answer.message.contains("same-id") && !answer.message.contains("sha256"), "\(answer.message)")
        #expect(answer.message.contains("another file"))
        #expect(server.receipts() == [header.uploadID.hex + ".done"])
        // The owner sends its file again: its name, no second copy.
        #expect(try upload(header, data, port: server.port, expectOffset: UInt64(data.count)).storedName == "same-id.bin")
        #expect(server.storedFiles() == ["same-id.bin"])
        #expect(server.contents("same-id.bin") == data)
    }

    /// The crash this guards against most: the partial linked into place, the process killed
    /// before it wrote the receipt and removed the partial.
    @Test func uploadLinkedBeforeACrashButWithoutItsReceiptIsNotStoredTwice() throws {
        let directory = BackgroundServer.temporaryDirectory()
        let partials = directory + "/.datastream/partial"
        try FileManager.default.createDirectory(atPath: partials, withIntermediateDirectories: true)
        let data = content(55, count: 123_456)
        // Two uploads: one linked under its own name, one under `-1` (its name was taken).
        #expect(FileManager.default.createFile(atPath: directory + "/taken.bin", contents: Data("someone else's".utf8)))
        var headers: [FileHeader] = []
        for (name, linkedAs) in [("crash.bin", "crash.bin"), ("taken.bin", "taken-1.bin")] {
            let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .xxh3_128, name: name)
            let part = partials + "/\(header.uploadID.hex).part"
            #expect(FileManager.default.createFile(atPath: part, contents: Data(data)))
            #expect(FileManager.default.createFile(atPath: partials + "/\(header.uploadID.hex).meta", contents: Data(PartialMetadata(header).encoded)))
            #expect(link(part, directory + "/" + linkedAs) == 0)
            headers.append(header)
        }
        let server = try BackgroundServer(directory: directory)
        defer { server.stop() }
        #expect(try upload(headers[0], data, port: server.port, expectOffset: UInt64(data.count)).storedName == "crash.bin")
        #expect(try upload(headers[1], data, port: server.port, expectOffset: UInt64(data.count)).storedName == "taken-1.bin")
        #expect(server.storedFiles() == ["crash.bin", "taken-1.bin", "taken.bin"])
        #expect(server.contents("taken.bin") == Array("someone else's".utf8))
        #expect(server.partials().isEmpty)
        #expect(server.receipts() == headers.map { $0.uploadID.hex + ".done" }.sorted())
        // And from now on the receipt answers.
        #expect(try upload(headers[0], data, port: server.port, expectOffset: UInt64(data.count)).storedName == "crash.bin")
        #expect(server.storedFiles() == ["crash.bin", "taken-1.bin", "taken.bin"])
    }

    @Test func receiptsOlderThanThePartialAgeLimitAreRemovedAtStart() throws {
        let directory = BackgroundServer.temporaryDirectory()
        let data = content(56, count: 5_000)
        let old = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .sha256, name: "old.bin")
        let recent = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .sha256, name: "recent.bin")
        let first = try BackgroundServer(directory: directory)
        #expect(try upload(old, data, port: first.port).storedName == "old.bin")
        #expect(try upload(recent, data, port: first.port).storedName == "recent.bin")
        first.stop()
        let partials = directory + "/.datastream/partial/"
        var times = [timeval(tv_sec: time(nil) - 7_200, tv_usec: 0), timeval(tv_sec: time(nil) - 7_200, tv_usec: 0)]
        #expect(utimes(partials + old.uploadID.hex + ".done", &times) == 0)
        #expect(FileManager.default.createFile(atPath: partials + recent.uploadID.hex + ".done.tmp", contents: Data("half".utf8)))
        #expect(utimes(partials + recent.uploadID.hex + ".done.tmp", &times) == 0)  // left by a writer long gone

        let second = try BackgroundServer(directory: directory) { $0.partialMaxAge = 3_600 }
        defer { second.stop() }
        #expect(second.receipts() == [recent.uploadID.hex + ".done"])
        // The expired one is a new upload again; the other still answers.
        #expect(try upload(old, data, port: second.port).storedName == "old-1.bin")
        #expect(try upload(recent, data, port: second.port, expectOffset: UInt64(data.count)).storedName == "recent.bin")
    }
}
