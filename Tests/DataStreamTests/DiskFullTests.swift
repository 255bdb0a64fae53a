import DataStream
import DataStreamCore
import Foundation
import Glibc
import Testing

/// A small tmpfs, mounted for one test and removed after it (needs root: CI and this machine run
/// as root). The receiver's directory is `directory`; `fill(bytes:)` takes space beside it.
final class SmallFileSystem {
    let mountPoint: String
    var directory: String { mountPoint + "/in" }

    init(megabytes: Int) throws {
        mountPoint = BackgroundServer.temporaryDirectory()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/mount")
        p.arguments = ["-t", "tmpfs", "-o", "size=\(megabytes)m", "tmpfs", mountPoint]
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw TestError("mount tmpfs failed (root needed)") }
        mkdir(directory, 0o755)
    }

    deinit {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/umount")
        p.arguments = ["-l", mountPoint]
        try? p.run()
        p.waitUntilExit()
        rmdir(mountPoint)
    }

    /// Writes a filler file beside the receiver's directory until `bytes` are written or the
    /// file system is full; returns the bytes written.
    @discardableResult
    func fill(bytes: Int) -> Int {
        let fd = open(mountPoint + "/filler", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        defer { close(fd) }
        let block = [UInt8](repeating: 0xAB, count: 64 << 10)
        var written = 0
        while written < bytes {
            let n = block.withUnsafeBytes { write(fd, $0.baseAddress, min($0.count, bytes - written)) }
            if n <= 0 { break }
            written += n
        }
        return written
    }

    func removeFiller() { unlink(mountPoint + "/filler") }
}

@Suite(.enabled(if: getuid() == 0, "mounting a tmpfs needs root"))
struct DiskFullTests {
    /// Uploads that would not fit, counting the one in progress, are refused at their start
    /// with "disk full"; the others go on and finish.
    @Test func anUploadThatWouldNotFitIsRefusedAtItsStart() throws {
        let fs = try SmallFileSystem(megabytes: 8)
        let server = try BackgroundServer(directory: fs.directory) { $0.minFreeSpace = 0; $0.udpEnabled = false }
        let dataA = content(100, count: 5 << 20)
        let headerA = FileHeader(uploadID: .random(), size: UInt64(dataA.count), digest: .xxh3_128, name: "a.bin")
        let a = try BlockingClient(port: server.port)
        try a.handshake()
        #expect(try a.announce(headerA) == 0)
        a.send(Array(dataA[0..<(1 << 20)]))

        // 4 MiB more would fit the free space now, but not with A's 5 MiB to come.
        let b = try BlockingClient(port: server.port)
        try b.handshake()
        b.send(Wire.file(FileHeader(uploadID: .random(), size: 4 << 20, digest: .xxh3_128, name: "b.bin")))
        let answer = try #require(b.readFrame())
        #expect(answer.type == .result)
        let refused = try Wire.decodeResult(answer.payload)
        #expect(refused.status == .storageFailed)
        #expect(refused.message.hasPrefix("disk full"), "\(refused.message)")
        // A seed upload that would not fit. Its size field could also be read as a short size
        // followed by a file beginning with digits (the seed framing cannot tell), so it is
        // refused as soon as the bytes that arrive would not fit, long before the disk fills.
        let c = try BlockingClient(port: server.port)
        c.send(Array(String(4 << 20).utf8) + Array("x".utf8) + content(101, count: (4 << 20) - 1))
        #expect(c.readUntilEOF() != nil)
        // One that fits is stored.
        let dataD = content(102, count: 100_000)
        let d = try BlockingClient(port: server.port)
        d.send(Array(String(dataD.count).utf8) + dataD)
        d.shutdownWrite()
        #expect(d.readUntilEOF() != nil)

        a.send(Array(dataA[(1 << 20)...]))
        a.send(Wire.end(digest: Digests.compute(.xxh3_128, dataA)))
        #expect(try a.result().status == .stored)
        #expect(server.eventually { server.storedFiles().count == 2 })
        server.stop()
        #expect(server.contents("a.bin") == dataA)
        #expect(server.storedFiles().contains { server.contents($0) == dataD })
        #expect(!server.storedFiles().contains("b.bin"))
        #expect(server.partials().isEmpty)
    }

    /// Two servers on one directory budget together: an upload one of them holds counts on the
    /// other, which refuses what would not fit beside it; once it is let go, the other accepts.
    @Test func anUploadAnotherServerHoldsCountsAgainstTheBudget() throws {
        let fs = try SmallFileSystem(megabytes: 8)
        let a = try BackgroundServer(directory: fs.directory) { $0.minFreeSpace = 0; $0.udpEnabled = false }
        let b = try BackgroundServer(directory: fs.directory) { $0.minFreeSpace = 0; $0.udpEnabled = false }
        defer { a.stop(); b.stop() }
        let data = content(103, count: 5 << 20)
        let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .xxh3_128, name: "held.bin")
        var holder: BlockingClient? = try BlockingClient(port: a.port)
        try holder?.handshake()
        #expect(try holder?.announce(header) == 0)
        holder?.send(Array(data[0..<(1 << 20)]))
        #expect(a.waitForStatistics { $0.bytesReceived >= 1 << 20 })

        let other = FileHeader(uploadID: .random(), size: 4 << 20, digest: .xxh3_128, name: "other.bin")
        let refused = try BlockingClient(port: b.port)
        try refused.handshake()
        refused.send(Wire.file(other))
        let answer = try #require(refused.readFrame())
        #expect(answer.type == .result)
        #expect(try Wire.decodeResult(answer.payload).message.hasPrefix("disk full"))

        holder = nil  // A lets the upload go: its 1 MiB stays as a partial, its hold goes
        let fits = content(104, count: 4 << 20)
        let accepted = FileHeader(uploadID: .random(), size: UInt64(fits.count), digest: .xxh3_128, name: "fits.bin")
        #expect(b.eventually {
            guard let c = try? BlockingClient(port: b.port), (try? c.handshake()) != nil, (try? c.announce(accepted)) == 0 else { return false }
            c.send(fits)
            c.send(Wire.end(digest: Digests.compute(.xxh3_128, fits)))
            return (try? c.result())?.status == .stored
        })
        #expect(b.contents("fits.bin").map { $0 == fits } == true)
    }

    /// The disk fills while an upload is being written (another writer took the space): the
    /// client hears "disk full" (code 23), nothing appears under a final name, the native
    /// partial is kept and resumes once there is room, and other uploads are served.
    @Test func aDiskThatFillsMidUploadGivesAnExplicitErrorAndResumes() throws {
        let fs = try SmallFileSystem(megabytes: 4)
        let server = try BackgroundServer(directory: fs.directory) { $0.minFreeSpace = 0; $0.udpEnabled = false }
        let data = content(103, count: 3 << 20)
        let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .xxh3_128, name: "big.bin")
        let client = try BlockingClient(port: server.port)
        try client.handshake()
        #expect(try client.announce(header) == 0)
        client.send(Array(data[0..<500_000]))
        #expect(waitUntil { server.hasRead(client) })
        fs.fill(bytes: 4 << 20)  // whatever is left
        client.send(Array(data[500_000...]))
        let frame = client.readFrame()
        #expect(frame?.type == .error)
        let error = frame.map { Wire.decodeError($0.payload) }
        #expect(error?.code == ProtocolError.diskFull(reason: "").code)
        #expect(error?.message.hasPrefix("disk full") == true, "\(String(describing: error?.message))")
        #expect(server.storedFiles().isEmpty)
        // While full, a seed upload fails without leaving anything behind.
        let seed = try BlockingClient(port: server.port)
        seed.send(Array("200000".utf8) + content(104, count: 200_000))
        seed.shutdownWrite()
        #expect(seed.readUntilEOF() != nil)
        #expect(server.storedFiles().isEmpty)
        // Both failures are logged as disk full, naming the file that could not be written (the
        // native partial; the seed upload's file has no name yet: its directory).
        let failures = server.log.lines.filter { $0.contains("upload failed") }
        #expect(failures.count == 2 && failures.allSatisfy { $0.contains("disk full") && $0.contains("ENOSPC") }, "\(failures)")
        #expect(failures.contains { $0.contains("/.datastream/partial/") }, "\(failures)")
        #expect(failures.contains { $0.contains("`\(fs.directory) (file without a name)`") }, "\(failures)")

        fs.removeFiller()
        let again = try BlockingClient(port: server.port)
        try again.handshake()
        let offset = try again.announce(header)
        #expect(offset > 0 && offset <= 3 << 20)
        again.send(Array(data[Int(offset)...]))
        again.send(Wire.end(digest: Digests.compute(.xxh3_128, data)))
        #expect(try again.result().status == .stored)
        server.stop()
        #expect(server.contents("big.bin") == data)
        #expect(server.storedFiles() == ["big.bin"])
        #expect(server.partials().isEmpty)
    }
}
