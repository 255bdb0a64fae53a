import CLibUV
import Glibc
import Testing
@testable import UV
import Foundation

/// Tests in the style of libuv's own: each has its own loop, counts its callbacks, and ends by
/// checking that the loop closes cleanly (no handle left open).
struct LoopAndHandleTests {
    @Test func thousandsOfHandlesOpenAndCloseWithoutLeaks() throws {
        let loop = try Loop()
        var closed = 0
        let n = 3000
        for i in 0..<n {
            let handle: Handle
            switch i % 4 {
            case 0: handle = try UV.Timer(loop: loop)
            case 1: handle = try TCPListener(loop: loop)
            case 2: handle = try UDPSocket(loop: loop, batchedReceive: i % 8 == 2)
            default: handle = try UV.Signal(loop: loop)
            }
            handle.close { closed += 1 }
            handle.close { Issue.record("a second close must do nothing") }
        }
        #expect(loop.openHandleCount == n)
        loop.run()
        #expect(closed == n)
        #expect(loop.openHandleCount == 0)
        try loop.close()
    }

    @Test func ownedLoopRefusesToCloseWithOpenHandles() throws {
        let loop = try Loop()
        let timer = try UV.Timer(loop: loop)
        #expect(throws: UVOperationError.self) { try loop.close() }
        timer.close()
        loop.run()
        try loop.close()
    }

    @Test func runsOnALoopTheCallerOwns() throws {
        // An embedding C tool creates and closes its own uv_loop_t.
        let raw = UnsafeMutablePointer<uv_loop_t>.allocate(capacity: 1)
        defer { raw.deallocate() }
        #expect(uv_loop_init(raw) == 0)
        let loop = Loop(borrowing: UnsafeMutableRawPointer(raw))
        #expect(!loop.ownsLoop)
        var fired = 0
        let timer = try UV.Timer(loop: loop)
        try timer.start(timeout: 5) {
            fired += 1
            timer.close()
        }
        #expect(uv_run(raw, UV_RUN_DEFAULT) == 0)
        #expect(fired == 1)
        #expect(uv_loop_close(raw) == 0)
    }

    @Test func repeatingTimerAndSignal() throws {
        let loop = try Loop()
        var ticks = 0
        var signals = 0
        let timer = try UV.Timer(loop: loop)
        let signal = try UV.Signal(loop: loop)
        let deadline = try UV.Timer(loop: loop)
        try signal.start(SIGUSR2) { signum in
            #expect(signum == SIGUSR2)
            signals += 1
            signal.close()
            deadline.close()
        }
        try timer.start(timeout: 1, repeat: 1) {
            ticks += 1
            if ticks == 3 { kill(getpid(), SIGUSR2) }
            if ticks == 5 { timer.close() }
        }
        try deadline.start(timeout: 5000) {
            Issue.record("the signal did not arrive within 5 s")
            signal.close()
            deadline.close()
        }
        loop.run()
        #expect(ticks == 5)
        #expect(signals == 1)
        try loop.close()
    }

    @Test func errorsNameTheOperationAndTheLibuvError() throws {
        let loop = try Loop()
        let fs = FileSystem(loop: loop)
        var seen: UVOperationError?
        try fs.open("/nonexistent/dir/file", flags: [.readOnly]) { r in
            if case .failure(let e) = r { seen = e }
        }
        loop.run()
        #expect(seen?.error == .noSuchFile)
        #expect(seen?.error.name == "ENOENT")
        #expect(seen?.description == "fs_open `/nonexistent/dir/file` failed: ENOENT (no such file or directory)")
        try loop.close()
    }

    @Test func addressInUseIsATypedError() throws {
        let loop = try Loop()
        let a = try TCPListener(loop: loop)
        try a.bind(SocketAddress(host: "127.0.0.1", port: 0))
        try a.listen { _ in }
        let port = try a.localAddress().port
        let b = try TCPListener(loop: loop)
        try b.bind(SocketAddress(host: "127.0.0.1", port: port))
        do {
            try b.listen { _ in }
            Issue.record("listen on a used port succeeded")
        } catch {
            #expect(error.error == .addressInUse)
        }
        a.close()
        b.close()
        loop.run()
        try loop.close()
    }
}

struct FileSystemTests {
    /// A work item runs off the loop thread, its `after` on it; the blocking calls inside give the
    /// same typed errors as the asynchronous ones.
    @Test func queuedWorkRunsBlockingFileCallsOffTheLoopThread() throws {
        let dir = "/tmp/uv-work-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o755)
        let source = dir + "/a"
        #expect(FileManager.default.createFile(atPath: source, contents: Data("abc".utf8)))
        final class Box: @unchecked Sendable { var workThread: pthread_t?; var errors: [UVOperationError] = [] }
        let box = Box()
        let loop = try Loop()
        let loopThread = pthread_self()
        var afterRanOnLoop = false
        try loop.queueWork({
            box.workThread = pthread_self()
            do throws(UVOperationError) { try BlockingFileSystem.link(source, to: dir + "/b") } catch { box.errors.append(error) }
            // A second link to the same name fails with EEXIST, typed.
            do throws(UVOperationError) { try BlockingFileSystem.link(source, to: dir + "/b") } catch { box.errors.append(error) }
            do throws(UVOperationError) { try BlockingFileSystem.unlink(source) } catch { box.errors.append(error) }
            do throws(UVOperationError) { try BlockingFileSystem.unlink(source) } catch { box.errors.append(error) }
        }, after: {
            afterRanOnLoop = pthread_equal(pthread_self(), loopThread) != 0
        })
        loop.run()
        try loop.close()
        #expect(afterRanOnLoop)
        #expect(box.workThread.map { pthread_equal($0, loopThread) == 0 } == true)
        #expect(box.errors.map(\.error) == [.fileExists, .noSuchFile])
        #expect(box.errors.first?.description.contains("fs_link") == true)
        #expect(FileManager.default.contents(atPath: dir + "/b") == Data("abc".utf8))
        #expect(!FileManager.default.fileExists(atPath: source))
    }

    /// `status` sees a file through its descriptor and through each of its names alike (same
    /// inode, size and link count), and not through a symbolic link; `read` reads at an offset
    /// (0 at the end); `rename` replaces its target in one step. Failures are typed like the
    /// other calls.
    @Test func statusReadAndRename() throws {
        let dir = "/tmp/uv-status-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o755)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(FileManager.default.createFile(atPath: dir + "/a", contents: Data("hello".utf8)))
        #expect(FileManager.default.createFile(atPath: dir + "/old", contents: Data("old".utf8)))
        #expect(link(dir + "/a", dir + "/b") == 0)
        #expect(symlink(dir + "/a", dir + "/s") == 0)
        let fd = try BlockingFileSystem.open(dir + "/a", flags: [.readOnly])
        defer { try? BlockingFileSystem.close(fd) }
        let viaDescriptor = try BlockingFileSystem.status(of: fd)
        let viaA = try BlockingFileSystem.status(atPath: dir + "/a"), viaB = try BlockingFileSystem.status(atPath: dir + "/b")
        #expect(viaDescriptor == viaA && viaA == viaB)
        #expect(viaA.size == 5 && viaA.links == 2)
        var bytes = [UInt8](repeating: 0, count: 8)
        let n = try bytes.withUnsafeMutableBytes { (b) throws(UVOperationError) in try BlockingFileSystem.read(fd, into: b, offset: 1) }
        #expect(n == 4 && Array(bytes[0..<n]) == Array("ello".utf8))
        #expect(try bytes.withUnsafeMutableBytes { (b) throws(UVOperationError) in try BlockingFileSystem.read(fd, into: b, offset: 5) } == 0)
        #expect(try BlockingFileSystem.status(atPath: dir + "/s").inode != viaA.inode)
        #expect(throws: UVOperationError.self) { try BlockingFileSystem.status(atPath: dir + "/missing") }
        try BlockingFileSystem.rename(dir + "/b", to: dir + "/old")
        #expect(FileManager.default.contents(atPath: dir + "/old") == Data("hello".utf8))
        #expect(try BlockingFileSystem.status(atPath: dir + "/old").inode == viaA.inode)
        #expect(!FileManager.default.fileExists(atPath: dir + "/b"))
        do throws(UVOperationError) { try BlockingFileSystem.rename(dir + "/b", to: dir + "/c"); Issue.record("renamed a missing file") } catch {
            #expect(error.error == .noSuchFile)
            #expect(error.description.contains("fs_rename"))
        }
    }

    /// A file opened without a name is invisible until linked, then has exactly its bytes;
    /// linking onto a taken name is EEXIST (never a replacement); an unlinked one leaves nothing.
    @Test func unnamedFileIsInvisibleUntilLinked() throws {
        let dir = "/tmp/uv-tmpfile-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o755)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(FileManager.default.createFile(atPath: dir + "/taken", contents: Data("old".utf8)))
        final class Box: @unchecked Sendable { var listedBeforeLink: [String] = []; var errors: [UVError] = [] }
        let box = Box()
        let loop = try Loop()
        try loop.queueWork({
            do throws(UVOperationError) {
                let fd = try BlockingFileSystem.openTemporary(in: dir)
                let parts: [[UInt8]] = [Array("head-".utf8), Array(repeating: 0x41, count: 70_000), Array("-tail".utf8)]
                let memory = parts.map { p in
                    let m = UnsafeMutableRawBufferPointer.allocate(byteCount: p.count, alignment: 16)
                    m.copyBytes(from: p)
                    return UnsafeRawBufferPointer(m)
                }
                defer { memory.forEach { $0.deallocate() } }
                try BlockingFileSystem.writeAll(fd, buffers: [memory[0], UnsafeRawBufferPointer(start: nil, count: 0), memory[1], memory[2]], offset: 0)
                box.listedBeforeLink = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
                do throws(UVOperationError) { try BlockingFileSystem.linkTemporary(fd, to: dir + "/taken") } catch { box.errors.append(error.error) }
                try BlockingFileSystem.linkTemporary(fd, to: dir + "/stored")
                try BlockingFileSystem.close(fd)
                // Never linked: gone with its descriptor.
                let dropped = try BlockingFileSystem.openTemporary(in: dir)
                try BlockingFileSystem.close(dropped)
            } catch {
                box.errors.append(error.error)
            }
        }, after: {})
        loop.run()
        try loop.close()
        #expect(box.listedBeforeLink == ["taken"])
        #expect(box.errors == [.fileExists])
        #expect(FileManager.default.contents(atPath: dir + "/taken") == Data("old".utf8))
        #expect(FileManager.default.contents(atPath: dir + "/stored") == Data("head-".utf8 + [UInt8](repeating: 0x41, count: 70_000) + "-tail".utf8))
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: dir)) == ["taken", "stored"])
    }

    /// Through a directory descriptor (`openDirectory`): a file without a name made relative to
    /// it and linked by a relative name lands in that directory, even after the directory is
    /// renamed (the descriptor follows it, no path is walked again); a taken name is EEXIST; a
    /// file is not a directory.
    @Test func unnamedFileRelativeToDirectoryDescriptor() throws {
        let parent = "/tmp/uv-dirfd-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let dir = parent + "/a", moved = parent + "/b"
        mkdir(parent, 0o755)
        mkdir(dir, 0o755)
        defer { try? FileManager.default.removeItem(atPath: parent) }
        #expect(FileManager.default.createFile(atPath: dir + "/taken", contents: Data("old".utf8)))
        let directory = try BlockingFileSystem.openDirectory(dir)
        defer { try? BlockingFileSystem.close(directory) }
        #expect(rename(dir, moved) == 0)
        let bytes = Array("relative".utf8)
        let fd = try BlockingFileSystem.openTemporary(in: ".", relativeTo: directory)
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 1)
        defer { memory.deallocate() }
        memory.copyBytes(from: bytes)
        try BlockingFileSystem.writeAll(fd, buffers: [UnsafeRawBufferPointer(memory)], offset: 0)
        var errors: [UVError] = []
        do throws(UVOperationError) { try BlockingFileSystem.linkTemporary(fd, to: "taken", relativeTo: directory) } catch { errors.append(error.error) }
        try BlockingFileSystem.linkTemporary(fd, to: "stored", relativeTo: directory)
        try BlockingFileSystem.close(fd)
        #expect(errors == [.fileExists])
        #expect(FileManager.default.contents(atPath: moved + "/stored") == Data(bytes))
        #expect(FileManager.default.contents(atPath: moved + "/taken") == Data("old".utf8))
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: moved)) == ["taken", "stored"])
        do throws(UVOperationError) {
            _ = try BlockingFileSystem.openDirectory(moved + "/taken")
            Issue.record("a file opened as a directory")
        } catch {
            #expect(error.error == .notADirectory)
            #expect(error.description.contains("taken"))
        }
    }

    @Test func writeVectoredReadSyncLinkRenameUnlink() throws {
        let loop = try Loop()
        let fs = FileSystem(loop: loop)
        let dir = "/tmp/uvtests-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o755)
        let path = dir + "/a"
        let a = Array("hello ".utf8), b = Array("world".utf8)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
        defer { buffer.deallocate() }
        var steps: [String] = []
        try a.withUnsafeBytes { pa in
            try b.withUnsafeBytes { pb in
                try fs.open(path, flags: [.readWrite, .create, .exclusive]) { r in
                    guard case .success(let fd) = r else { Issue.record("open"); return }
                    steps.append("open")
                    try! fs.write(fd, buffers: [pa, pb], offset: 0) { r in
                        #expect((try? r.get()) == 11)
                        steps.append("write")
                        try! fs.fsync(fd) { e in
                            #expect(e == nil)
                            try! fs.read(fd, into: buffer, offset: 0) { r in
                                #expect((try? r.get()) == 11)
                                #expect(Array(buffer[0..<11]) == a + b)
                                steps.append("read")
                                try! fs.size(of: fd) { r in
                                    #expect((try? r.get()) == 11)
                                    try! fs.close(fd) { _ in
                                        try! fs.link(path, to: dir + "/b") { e in
                                            #expect(e == nil)
                                            try! fs.link(path, to: dir + "/b") { e in
                                                #expect(e?.error == .fileExists)
                                                steps.append("link")
                                                try! fs.rename(dir + "/b", to: dir + "/c") { e in
                                                    #expect(e == nil)
                                                    try! fs.unlink(path)
                                                    try! fs.unlink(dir + "/c") { e in
                                                        #expect(e == nil)
                                                        steps.append("unlink")
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                loop.run()
            }
        }
        #expect(steps == ["open", "write", "read", "link", "unlink"])
        #expect(rmdir(dir) == 0)
        try loop.close()
    }

    @Test func noFollowRefusesSymlinks() throws {
        let loop = try Loop()
        let link = "/tmp/uvtests-link-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        symlink("/etc/hostname", link)
        defer { unlink(link) }
        var error: UVOperationError?
        try FileSystem(loop: loop).open(link, flags: [.readOnly, .noFollow]) { r in
            if case .failure(let e) = r { error = e }
        }
        loop.run()
        #expect(error?.error == .loopDetected)
        try loop.close()
    }
}

final class Collector: TCPStreamReader {
    var received: [UInt8] = []
    var ended = false
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)
    var onEnd: (() -> Void)?
    deinit { buffer.deallocate() }
    func readBuffer(for stream: TCPStream, suggestedSize: Int) -> UnsafeMutableRawBufferPointer? { buffer }
    func stream(_ stream: TCPStream, didRead event: ReadEvent, buffer: UnsafeMutableRawBufferPointer?) {
        switch event {
        case .data(let n): received += buffer![0..<n]
        default:
            ended = true
            onEnd?()
        }
    }
}

/// Reads a `ClientSocketGroup` socket when it is readable, and notes every event.
final class GroupOwner: ClientSocketOwner {
    let group: ClientSocketGroup
    var events: [ClientSocketEvents] = []
    var reads: [TCPStream.Peeked] = []
    var onEvent: (() -> Void)?
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
    init(group: ClientSocketGroup) { self.group = group }
    deinit { buffer.deallocate() }
    func socket(_ socket: ClientSocket, isReady events: ClientSocketEvents) {
        self.events.append(events)
        if events.contains(.readable) { reads.append(group.read(socket, into: buffer)) }
        onEvent?()
    }
}

struct TCPAndUDPTests {
    @Test func tcpRoundTripWithShutdown() throws {
        let loop = try Loop()
        let listener = try TCPListener(loop: loop)
        try listener.bind(SocketAddress(host: "127.0.0.1", port: 0))
        let collector = Collector()
        var accepted: TCPStream?
        try listener.listen { r in
            accepted = try? r.get()
            try? accepted?.startReading(collector)
        }
        collector.onEnd = {
            accepted?.close()
            listener.close()
        }
        let payload = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        var wrote = false
        try TCPStream.connect(loop: loop, to: listener.localAddress()) { r in
            guard let s = try? r.get() else { Issue.record("connect"); return }
            try! s.write(payload) { e in
                #expect(e == nil)
                wrote = true
                try! s.shutdown { _ in s.close() }
            }
        }
        loop.run()
        #expect(wrote)
        #expect(collector.ended)
        #expect(collector.received == payload)
        try loop.close()
    }

    /// `readNow` reads what the socket already holds without the loop polling it: nothing yet
    /// right after accept (false, the buffer handed back empty), then the client's bytes and its
    /// end. The reads run from an `Idle` callback, which runs at every turn of the loop (the
    /// loop does not block meanwhile) until stopped. The client is a plain blocking socket that
    /// sends only once its connection has been accepted and read.
    @Test func readNowTakesWhatTheSocketHoldsAndIdleRunsEachTurn() throws {
        let loop = try Loop()
        let listener = try TCPListener(loop: loop)
        try listener.bind(SocketAddress(host: "127.0.0.1", port: 0))
        let collector = Collector()
        let idle = try Idle(loop: loop)
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(client) }
        let payload = (0..<3000).map { UInt8(truncatingIfNeeded: $0 * 13) }
        var accepted: TCPStream?
        var readBeforeSend: Bool?
        var idleTurns = 0, readsNow: [Bool] = []
        try listener.listen { r in
            guard let stream = try? r.get() else { Issue.record("accept"); return }
            accepted = stream
            readBeforeSend = stream.readNow(collector)
            #expect(payload.withUnsafeBytes { Glibc.send(client, $0.baseAddress, $0.count, 0) } == payload.count)
            shutdown(client, Int32(SHUT_WR))
            try! idle.start {
                idleTurns += 1
                readsNow.append(stream.readNow(collector))
                if collector.ended || idleTurns == 1000 {
                    idle.stop()
                    idle.close()
                    stream.close()
                    listener.close()
                }
            }
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(try listener.localAddress().port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(connected == 0)
        loop.run()
        #expect(accepted != nil)
        #expect(readBeforeSend == false)
        #expect(collector.received == payload)
        #expect(collector.ended)
        #expect(readsNow.last == true)
        #expect(idleTurns == readsNow.count && idleTurns < 1000)
        #expect(!idle.isActive)
        // Closed: its address is EBADF, never a read of the freed handle.
        do throws(UVOperationError) {
            _ = try accepted?.peerAddress()
            Issue.record("the peer of a closed stream")
        } catch {
            #expect(error.error == .badDescriptor)
        }
        try loop.close()
    }

    /// An accepted socket is given to libuv only when libuv must act on it. One served by
    /// `readNow` alone and closed was never libuv's: the client still sees an orderly end. One
    /// that is answered (a write) is given to libuv then, and its reply arrives before the end.
    /// The peer's address is known either way.
    @Test func acceptedSocketsWorkWhetherOrNotLibuvEverHadThem() throws {
        let loop = try Loop()
        let listener = try TCPListener(loop: loop)
        try listener.bind(SocketAddress(host: "127.0.0.1", port: 0))
        let port = try listener.localAddress().port
        // Accepted (and served) only once the loop runs: both clients have sent everything by then.
        var served: [String] = [], peers: [String] = []
        try listener.listen { r in
            guard let stream = try? r.get() else { Issue.record("accept"); return }
            let collector = Collector()
            while !collector.ended && stream.readNow(collector) {}
            if let peer = try? stream.peerAddress() { peers.append(peer.host) }
            let text = String(decoding: collector.received, as: UTF8.self)
            served.append(text)
            if text == "answer me" {
                try! stream.write(Array("ok".utf8)) { e in
                    #expect(e == nil)
                    stream.close()
                }
            } else {
                stream.close()
            }
            if served.count == 2 { listener.close() }
        }
        var clients: [Int32] = []
        defer { clients.forEach { _ = close($0) } }
        for message in ["quiet", "answer me"] {
            let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            clients.append(client)
            var timeout = timeval(tv_sec: 10, tv_usec: 0)  // a socket never closed fails the test, not hangs it
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            #expect(connected == 0)
            #expect(Glibc.send(client, message, message.utf8.count, 0) == message.utf8.count)
            shutdown(client, Int32(SHUT_WR))
        }
        loop.run()
        try loop.close()
        #expect(served == ["quiet", "answer me"])
        #expect(peers == ["127.0.0.1", "127.0.0.1"])
        var replies: [[UInt8]] = []
        for client in clients {
            var reply: [UInt8] = [], buffer = [UInt8](repeating: 0, count: 64)
            while true {
                let n = recv(client, &buffer, buffer.count, 0)
                if n <= 0 { #expect(n == 0, "an orderly end, not \(errno)"); break }
                reply += buffer[0..<n]
            }
            replies.append(reply)
        }
        #expect(replies == [[], Array("ok".utf8)])
    }

    /// A connection made `from` a chosen loopback address leaves from it (the listener sees it),
    /// and a prefix copied plus a body not copied arrive as one stream, in order.
    @Test func connectFromASourceAddressAndWritePrefixThenBody() throws {
        let loop = try Loop()
        let listener = try TCPListener(loop: loop)
        try listener.bind(SocketAddress(host: "127.0.0.1", port: 0))
        let collector = Collector()
        var accepted: TCPStream?
        var peers: [String] = []
        try listener.listen { r in
            accepted = try? r.get()
            if let peer = try? accepted?.peerAddress() { peers.append(peer.host) }
            try? accepted?.startReading(collector)
        }
        collector.onEnd = {
            accepted?.close()
            listener.close()
        }
        let body = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 * 13) }
        let bodyMemory = UnsafeMutableRawBufferPointer.allocate(byteCount: body.count, alignment: 16)
        defer { bodyMemory.deallocate() }
        bodyMemory.copyBytes(from: body)
        try TCPStream.connect(loop: loop, to: listener.localAddress(), from: SocketAddress(host: "127.0.0.7", port: 0)) { r in
            guard let s = try? r.get() else { Issue.record("connect"); return }
            try! s.write(copying: Array("100000".utf8), then: UnsafeRawBufferPointer(bodyMemory)) { e in
                #expect(e == nil)
                try! s.shutdown { _ in s.close() }
            }
        }
        loop.run()
        #expect(peers == ["127.0.0.7"])
        #expect(collector.received == Array("100000".utf8) + body)
        // A source address this machine does not have is a typed bind error, not a crash.
        #expect(throws: UVOperationError.self) {
            try TCPStream.connect(loop: loop, to: SocketAddress(host: "127.0.0.1", port: 9), from: SocketAddress(host: "192.0.2.1", port: 0)) { _ in }
        }
        loop.run()
        try loop.close()
    }

    /// A `ClientSocketGroup` socket's segment packing, by the kernel's own count of the client's
    /// segments (`tcpi_segs_out` in `TCP_INFO`): with the ACK riding on the data and `more`, a
    /// short message and its end leave in one segment after the SYN (2); without, the
    /// handshake's ACK, the bytes and the FIN go one by one (4). Either way the send takes the
    /// whole message at once, the receiver finds every byte and the end when it accepts, and
    /// the group reports the receiver's close as readable, end of stream.
    @Test(arguments: [true, false])
    func clientSocketGroupPacksAShortMessageWithItsEnd(packed: Bool) throws {
        let loop = try Loop()
        let listener = try TCPListener(loop: loop)
        try listener.bind(SocketAddress(host: "127.0.0.1", port: 0))
        let collector = Collector()
        try listener.listen { r in
            guard let accepted = try? r.get() else { Issue.record("accept"); return }
            while !collector.ended, accepted.readNow(collector) {}
            accepted.close()
            listener.close()
        }
        let group = try ClientSocketGroup(loop: loop)
        let owner = GroupOwner(group: group)
        let message = Array("3000".utf8)
        let body = (0..<3000).map { UInt8(truncatingIfNeeded: $0 * 11) }
        let client = try group.connect(to: listener.localAddress(), segments: packed ? [.ackWithFirstBytes] : [])
        let taken = try message.withUnsafeBytes { m in try body.withUnsafeBytes { try group.send(client, m, $0, more: packed) } }
        #expect(taken == message.count + body.count)
        try group.shutdownWrite(client)
        #expect(try segmentsSent(client.descriptor) == (packed ? 2 : 4))
        try group.watch(client, for: .readable, owner: owner)
        owner.onEvent = {
            group.close(client)
            group.close()
        }
        loop.run()
        owner.onEvent = nil  // it holds the owner and the group
        #expect(collector.ended)
        #expect(collector.received == message + body)
        #expect(owner.reads == [.endOfStream])
        try loop.close()
    }

    /// A `ClientSocketGroup` socket sending more than the kernel holds: the send takes part,
    /// `.writable` comes once the receiver has read some, and 8 MiB arrive whole and in order.
    /// A connection nobody listens for fails with a typed error, at connect or at the first send.
    @Test func clientSocketGroupWaitsForWritableAndReportsRefusal() throws {
        let loop = try Loop()
        let listener = try TCPListener(loop: loop)
        try listener.bind(SocketAddress(host: "127.0.0.1", port: 0))
        let collector = Collector()
        var accepted: TCPStream?
        try listener.listen { r in
            accepted = try? r.get()
            try? accepted?.startReading(collector)
        }
        let group = try ClientSocketGroup(loop: loop)
        let owner = GroupOwner(group: group)
        let body = UnsafeMutableRawBufferPointer.allocate(byteCount: 8 << 20, alignment: 16)
        defer { body.deallocate() }
        for i in 0..<body.count { body[i] = UInt8(truncatingIfNeeded: i &* 7 &+ i >> 12) }
        let port = try listener.localAddress().port
        let client = try group.connect(to: listener.localAddress())
        var sent = 0, waits = 0
        func sendSome() {
            while sent < body.count {
                let n = try! group.send(client, UnsafeRawBufferPointer(start: nil, count: 0), UnsafeRawBufferPointer(rebasing: body[sent...]), more: false)
                sent += n
                if n == 0 || sent < body.count {
                    waits += 1
                    try! group.watch(client, for: .writable, owner: owner)
                    return
                }
            }
            try! group.shutdownWrite(client)
            try! group.watch(client, for: .readable, owner: owner)
        }
        owner.onEvent = {
            if owner.events.last == .writable { sendSome(); return }
            group.close(client)
            group.close()
        }
        collector.onEnd = {
            accepted?.close()
            listener.close()
        }
        sendSome()
        loop.run()
        owner.onEvent = nil  // it holds the owner and the group
        #expect(waits > 0, "8 MiB did not fit the socket at once")
        #expect(sent == body.count)
        #expect(collector.received.elementsEqual(body))
        #expect(owner.reads == [.endOfStream])

        // Nobody listens on the closed listener's port now.
        let refusing = try ClientSocketGroup(loop: loop)
        var refused: UVOperationError?
        do {
            let s = try refusing.connect(to: SocketAddress(host: "127.0.0.1", port: port))
            refused = #expect(throws: UVOperationError.self) { _ = try refusing.send(s, UnsafeRawBufferPointer(start: nil, count: 0), UnsafeRawBufferPointer(rebasing: body[0..<10]), more: false) }
            refusing.close(s)
        } catch let e {
            refused = e
        }
        #expect(refused?.error == .connectionRefused)
        refusing.close()
        loop.run()
        try loop.close()
    }

    /// An event the group read for a socket closed before its turn never reaches the socket that
    /// took its descriptor: two sockets ready in one turn; the first one told closes the other
    /// and opens a new socket, which the kernel gives the lowest free descriptor (most often the
    /// one just closed), watched for `.readable` (nothing is ever sent to it). The other's
    /// writable event, read in the same turn, must be dropped. Tests run in parallel and may take
    /// that descriptor first, so the scenario is tried again (at most 50 times) until the new
    /// socket has it; nothing here moves a descriptor another test may own.
    @Test func clientSocketGroupDropsAnEventForADescriptorReusedInTheSameTurn() throws {
        var reusedOnce = false
        for _ in 0..<50 where !reusedOnce {
            let loop = try Loop()
            let listener = try TCPListener(loop: loop)
            try listener.bind(SocketAddress(host: "127.0.0.1", port: 0))
            var accepted: [TCPStream] = []
            try listener.listen { r in if let s = try? r.get() { accepted.append(s) } }
            let address = try listener.localAddress()
            let group = try ClientSocketGroup(loop: loop)
            let first = GroupOwner(group: group), second = GroupOwner(group: group), newcomer = GroupOwner(group: group)
            let a = try group.connect(to: address), b = try group.connect(to: address)
            let timer = try Timer(loop: loop)
            var swaps = 0
            func swap(closing other: ClientSocket, keeping own: ClientSocket) {
                guard swaps == 0 else { return }
                swaps += 1
                group.close(other)
                let fresh = try! group.connect(to: address)
                reusedOnce = fresh.descriptor == other.descriptor
                try! group.watch(fresh, for: .readable, owner: newcomer)
                // The next turn, after this one's events: close everything.
                try! timer.start(timeout: 0) {
                    group.close(fresh)
                    group.close(own)
                    group.close()
                    timer.close()
                    for s in accepted { s.close() }
                    listener.close()
                }
            }
            first.onEvent = { swap(closing: b, keeping: a) }
            second.onEvent = { swap(closing: a, keeping: b) }
            try group.watch(a, for: .writable, owner: first)
            try group.watch(b, for: .writable, owner: second)
            loop.run()
            first.onEvent = nil  // they hold the owners and the group
            second.onEvent = nil
            #expect(swaps == 1)
            #expect(first.events.count + second.events.count == 1, "only the first socket told is told")
            #expect(newcomer.events.isEmpty, "the closed socket's event reached the new one")
            try loop.close()
        }
        #expect(reusedOnce, "in 50 tries the new socket never got the closed one's descriptor")
    }

    /// A group's owners by descriptor: an event is for the owner only with the generation it was
    /// watched under; forgetting or replacing the socket on a descriptor drops the old one's
    /// events; a far descriptor grows the table; each new generation differs.
    @Test func clientSocketOwnersAnswerOnlyTheirOwnGeneration() throws {
        let loop = try Loop()
        let group = try ClientSocketGroup(loop: loop)
        let one = GroupOwner(group: group), two = GroupOwner(group: group)
        var owners = ClientSocketOwners()
        #expect(owners.generation(of: 7) == nil)
        #expect(owners.owner(of: 7, generation: 0) == nil)
        let g1 = owners.newGeneration(), g2 = owners.newGeneration()
        #expect(g1 != g2)
        owners.record(one, of: 7, generation: g1)
        #expect(owners.generation(of: 7) == g1)
        #expect(owners.owner(of: 7, generation: g1) === one)
        #expect(owners.owner(of: 7, generation: g2) == nil)
        #expect(owners.owner(of: 6, generation: g1) == nil)
        owners.record(two, of: 7, generation: g2)  // another socket on the same descriptor
        #expect(owners.owner(of: 7, generation: g1) == nil)
        #expect(owners.owner(of: 7, generation: g2) === two)
        owners.record(one, of: 5_000, generation: g1)
        #expect(owners.owner(of: 5_000, generation: g1) === one)
        owners.forget(7)
        owners.forget(9_999)  // never watched: nothing to forget
        #expect(owners.owner(of: 7, generation: g2) == nil)
        #expect(owners.generation(of: 7) == nil)
        owners.removeAll()
        #expect(owners.owner(of: 5_000, generation: g1) == nil)
        group.close()
        loop.run()
        try loop.close()
    }

    /// `tcpi_segs_out` (Linux 4.2): at byte 136 of the kernel's `struct tcp_info`, which
    /// Glibc's shorter copy of the struct lacks.
    private func segmentsSent(_ fd: Int32) throws -> UInt32 {
        var info = [UInt8](repeating: 0, count: 232)
        var length = socklen_t(info.count)
        let status = info.withUnsafeMutableBytes { getsockopt(fd, Int32(IPPROTO_TCP), TCP_INFO, $0.baseAddress, &length) }
        try #require(status == 0 && length >= 144)
        return info.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 136, as: UInt32.self) }
    }

    final class DatagramCollector: UDPSocketReceiver {
        var datagrams: [[UInt8]] = []
        var onDatagram: (() -> Void)?
        func receiveBuffer(for socket: UDPSocket, suggestedSize: Int) -> UnsafeMutableRawBufferPointer? {
            UnsafeMutableRawBufferPointer.allocate(byteCount: 20 * 65536, alignment: 16)
        }
        func socket(_ socket: UDPSocket, didReceive count: Int, in datagram: UnsafeMutableRawBufferPointer?, from sender: SocketAddress?, isMoreOfBatch: Bool, error: UVError?) {
            if sender != nil, let datagram {
                datagrams.append(Array(datagram[0..<count]))
                onDatagram?()
            }
            if !isMoreOfBatch { datagram?.deallocate() }
        }
    }

    @Test func udpBatchedReceiveOnLoopback() throws {
        let loop = try Loop()
        let receiver = try UDPSocket(loop: loop, batchedReceive: true)
        try receiver.bind(SocketAddress(host: "127.0.0.1", port: 0))
        #expect(try receiver.setReceiveBufferSize(1 << 20) > 0)
        let collector = DatagramCollector()
        let sender = try UDPSocket(loop: loop)
        try sender.bind(SocketAddress(host: "127.0.0.1", port: 0))
        let target = try receiver.localAddress()
        collector.onDatagram = {
            if collector.datagrams.count == 50 {
                receiver.close()
                sender.close()
            }
        }
        try receiver.startReceiving(collector)
        for i in 0..<50 {
            let bytes = [UInt8](repeating: UInt8(i), count: 1000)
            _ = try bytes.withUnsafeBytes { try sender.trySend($0, to: target) }
        }
        loop.run()
        collector.onDatagram = nil
        #expect(collector.datagrams.count == 50)
        #expect(Set(collector.datagrams.map { $0[0] }).count == 50)
        try loop.close()
    }

    @Test func crossThreadWakeup() throws {
        let loop = try Loop()
        var woke = 0
        var wakeup: AsyncWakeup!
        wakeup = try AsyncWakeup(loop: loop) {
            woke += 1
            wakeup.close()
        }
        let w = wakeup!
        let thread = Thread { w.send() }
        thread.start()
        loop.run()
        #expect(woke == 1)
        try loop.close()
    }
}

/// `BlockingSocketMove` on a real loopback connection and real files: without an observer the
/// bytes go socket → pipe → file (`splice`), with one through a buffer (`recv`, `pwrite`); both
/// stop at the limit and leave what follows in the socket, report the end of stream, and a
/// failed file write is an error naming the file, after which the next move works again.
struct BlockingSocketMoveTests {
    /// A connected pair of blocking TCP sockets on 127.0.0.1; the receiving end is non-blocking.
    private func loopbackPair() throws -> (sender: Int32, receiver: Int32) {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafeMutablePointer(to: &address) { p in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { a in
                guard bind(listener, a, length) == 0, listen(listener, 1) == 0, getsockname(listener, a, &length) == 0 else { throw POSIXError(.EADDRNOTAVAIL) }
            }
        }
        let sender = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try withUnsafePointer(to: &address) { p in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { a in
                guard connect(sender, a, length) == 0 else { throw POSIXError(.ECONNREFUSED) }
            }
        }
        let receiver = accept(listener, nil, nil)
        #expect(receiver >= 0)
        _ = fcntl(receiver, F_SETFL, fcntl(receiver, F_GETFL) | O_NONBLOCK)
        return (sender, receiver)
    }

    private func makeDirectory() throws -> String {
        let dir = "/tmp/uv-move-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    private func send(_ socket: Int32, _ bytes: [UInt8]) {
        var at = 0
        while at < bytes.count {
            let n = bytes[at...].withUnsafeBytes { Glibc.send(socket, $0.baseAddress, $0.count, 0) }
            precondition(n > 0, "send: \(errno)")
            at += n
        }
    }

    /// Moves until `limit` bytes are in the file (from `offset` on) or the stream ends, waiting
    /// (bounded) for data or the end of stream.
    private func moveAll(_ socket: Int32, _ file: FileDescriptor, from offset: Int = 0, limit: Int, buffer: UnsafeMutableRawBufferPointer, target: String = "moved.bin",
                         observe: ((UnsafeRawBufferPointer) -> Void)?) -> (moved: Int, end: BlockingSocketMove.End, next: UInt8?) {
        var moved = 0
        for _ in 0..<10_000 {
            let r = BlockingSocketMove.move(from: socket, to: file, at: Int64(offset + moved), limit: limit - moved, buffer: buffer, target: target, observe: observe)
            moved += r.moved
            if r.end != .wouldBlock { return (moved, r.end, r.next) }
            var p = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, 1000)
        }
        return (moved, .wouldBlock, nil)
    }

    @Test(arguments: [false, true])
    func movesExactlyTheLimitThenTheRestToEndOfStream(observed: Bool) throws {
        let dir = try makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (sender, receiver) = try loopbackPair()
        defer { close(receiver) }
        let body = (0..<(3 << 20) + 12_345).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) }
        let writer = Thread { self.send(sender, body + Array("Xtail".utf8)); shutdown(sender, Int32(SHUT_WR)) }
        writer.start()
        defer { close(sender) }
        let path = dir + "/moved.bin"
        let fd = open(path, O_CREAT | O_WRONLY, 0o644)
        defer { close(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 64)
        defer { buffer.deallocate() }
        var seen: [UInt8] = []
        let observe: ((UnsafeRawBufferPointer) -> Void)? = observed ? { seen.append(contentsOf: $0) } : nil

        let first = moveAll(receiver, FileDescriptor(rawValue: fd), limit: body.count, buffer: buffer, observe: observe)
        #expect(first.moved == body.count)
        #expect(first.end == .limitReached)
        #expect(first.next == UInt8(ascii: "X"), "the byte after the limit is peeked, not taken")
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(body))
        #expect(observed ? seen == body : seen.isEmpty)

        // The end of stream may come after the bytes (the sender's shutdown): wait for it.
        let rest = moveAll(receiver, FileDescriptor(rawValue: fd), from: body.count, limit: 100, buffer: buffer, observe: observe)
        #expect(rest.moved == 5)
        #expect(rest.end == .endOfStream)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(body + Array("Xtail".utf8)))
    }

    @Test(arguments: [false, true])
    func aFileThatRefusesWritesIsAnErrorNamingItAndTheNextMoveWorks(observed: Bool) throws {
        let dir = try makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (sender, receiver) = try loopbackPair()
        defer { close(sender); close(receiver) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 64)
        defer { buffer.deallocate() }
        let observe: ((UnsafeRawBufferPointer) -> Void)? = observed ? { _ in } : nil
        _ = FileManager.default.createFile(atPath: dir + "/read-only.bin", contents: nil)
        let readOnly = open(dir + "/read-only.bin", O_RDONLY)
        defer { close(readOnly) }
        let sent = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 >> 3) }
        let writer = Thread { self.send(sender, sent); shutdown(sender, Int32(SHUT_WR)) }
        writer.start()
        let failed = moveAll(receiver, FileDescriptor(rawValue: readOnly), limit: sent.count, buffer: buffer, target: "read-only.bin", observe: observe)
        guard case .failed(let error) = failed.end else { Issue.record("expected a failure, got \(failed.end)"); return }
        #expect(error.description.contains("read-only.bin"), "\(error)")
        #expect(error.error.code == -EBADF, "\(error)")
        #expect(failed.moved == 0)

        // What the failed move took is gone with its upload; nothing of it (no byte left in the
        // thread's pipe) reaches the next file, and the rest of the stream arrives intact.
        let goodPath = dir + "/good.bin"
        let good = open(goodPath, O_CREAT | O_WRONLY, 0o644)
        defer { close(good) }
        let rest = moveAll(receiver, FileDescriptor(rawValue: good), limit: sent.count, buffer: buffer, observe: observe)
        #expect(rest.end == .endOfStream)
        #expect(rest.moved > 0 && rest.moved < sent.count, "moved \(rest.moved)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: goodPath)) == Data(sent.suffix(rest.moved)))
    }

    /// A file that refuses `splice` (open for appending: `EINVAL`, as on a file system without
    /// splice support) still receives every byte, in order: the bytes already in the pipe and
    /// the rest of each move go by copy.
    @Test func aFileThatRefusesSpliceGetsTheBytesByCopy() throws {
        let dir = try makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (sender, receiver) = try loopbackPair()
        defer { close(receiver) }
        let sent = (0..<(2 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 131 >> 5) }
        let writer = Thread { self.send(sender, sent); shutdown(sender, Int32(SHUT_WR)) }
        writer.start()
        defer { close(sender) }
        let path = dir + "/appended.bin"
        let fd = open(path, O_CREAT | O_WRONLY | O_APPEND, 0o644)
        defer { close(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 64)
        defer { buffer.deallocate() }
        let all = moveAll(receiver, FileDescriptor(rawValue: fd), limit: sent.count + 1, buffer: buffer, target: path, observe: nil)
        #expect(all.end == .endOfStream)
        #expect(all.moved == sent.count)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(sent))
    }
}

struct SharedSlotsTests {
    /// Two holders of one slot file (as two processes would be: their locks are two open file
    /// descriptions') get different slots, see each other's words at once, and a slot whose
    /// holder went is free again, for the next holder, with its words zeroed.
    @Test func holdersGetTheirOwnSlotsSeeEachOtherAndFreeSlotsWhenGone() throws {
        let path = "/tmp/uv-slots-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(path) }
        let a = try SharedSlots(path: path, slots: 4, wordsPerSlot: 2)
        var b: SharedSlots? = try SharedSlots(path: path, slots: 4, wordsPerSlot: 2)
        let slotA = try #require(a.ownSlot), slotB = try #require(b?.ownSlot)
        #expect(slotA != slotB)
        a.store(1, 40)
        b!.add(1, 2)
        b!.add(1, UInt64(bitPattern: -1))  // a step down
        #expect(a.load(slot: slotB, word: 1) == 1)
        #expect(b!.load(slot: slotA, word: 1) == 40)
        #expect(a.sum(1, over: a.heldSlots()) == 41)
        #expect(Set(a.heldSlots()) == [slotA, slotB])
        b = nil
        #expect(a.heldSlots() == [slotA])
        // A reader takes no slot and sees what the one that ended left.
        let reader = try SharedSlots(path: path, slots: 4, wordsPerSlot: 2, claim: .none)
        #expect(reader.ownSlot == nil && reader.load(slot: slotB, word: 1) == 1)
        // Taking that very slot over keeps its words; a held slot cannot be taken.
        let successor = try SharedSlots(path: path, slots: 4, wordsPerSlot: 2, claim: .slot(slotB))
        #expect(successor.ownSlot == slotB && successor.load(slot: slotB, word: 1) == 1)
        #expect(throws: UVOperationError.self) { try SharedSlots(path: path, slots: 4, wordsPerSlot: 2, claim: .slot(slotA)) }
        // Any free slot starts at zero.
        let c = try SharedSlots(path: path, slots: 4, wordsPerSlot: 2)
        #expect(c.ownSlot.map { c.load(slot: $0, word: 1) } == 0)
        // Every slot held: the next claim fails with a typed error.
        let more = try SharedSlots(path: path, slots: 4, wordsPerSlot: 2)
        #expect(throws: UVOperationError.self) { try SharedSlots(path: path, slots: 4, wordsPerSlot: 2) }
        _ = (more, successor)
    }
}
