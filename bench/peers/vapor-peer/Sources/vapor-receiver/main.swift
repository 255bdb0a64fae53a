// Vapor as a peer for bench/http:
// - PUT /NAME streams the body (`body: .stream`) into a temporary file in the target directory
//   through NIO's NonBlockingFileIO (its thread pool), then renames it into place; 201.
// - GET /ws speaks DataStream's upload WebSocket (docs/PROTOCOL.md §8) for fresh uploads
//   without a token: hello, begin, ready at 0, binary messages written in order, stored.
// Usage: vapor-receiver PORT DIRECTORY
import Foundation
import NIOCore
import NIOPosix
import Vapor

let arguments = CommandLine.arguments
guard arguments.count == 3, let port = Int(arguments[1]) else {
    FileHandle.standardError.write(Data("usage: vapor-receiver PORT DIRECTORY\n".utf8))
    exit(2)
}
let directory = arguments[2]

/// A temporary file in the target directory, renamed into place once complete.
final class Upload: @unchecked Sendable {
    let handle: NIOFileHandle
    let temporary: String
    let name: String
    let size: Int
    var received = 0
    /// The writes so far, chained so they land in order.
    var written: EventLoopFuture<Void>

    init(name: String, size: Int, eventLoop: EventLoop) throws {
        temporary = directory + "/.upload-" + UUID().uuidString
        handle = try NIOFileHandle(_deprecatedPath: temporary, mode: .write, flags: .allowFileCreation(posixMode: 0o644))
        self.name = name
        self.size = size
        written = eventLoop.makeSucceededVoidFuture()
    }

    func write(_ buffer: ByteBuffer, io: NonBlockingFileIO, eventLoop: EventLoop) {
        received += buffer.readableBytes
        written = written.flatMap { io.write(fileHandle: self.handle, buffer: buffer, eventLoop: eventLoop) }
    }

    func finish() throws {
        try handle.close()
        guard rename(temporary, directory + "/" + name) == 0 else { throw Abort(.internalServerError) }
    }

    func abandon() {
        try? handle.close()
        unlink(temporary)
    }
}

/// The last path component of `raw`, unless it is empty or hidden.
@Sendable func safeName(_ raw: String) -> String? {
    let name = (raw as NSString).lastPathComponent
    return name.isEmpty || name.hasPrefix(".") ? nil : name
}

// Vapor reads its own command line: it gets "serve"; the port and directory are ours.
var environment = Environment.production
environment.arguments = [arguments[0], "serve"]
let app = try await Application.make(environment)
app.http.server.configuration.hostname = "127.0.0.1"
app.http.server.configuration.port = port
app.http.server.configuration.backlog = 4096
app.logger.logLevel = .error
app.routes.defaultMaxBodySize = "1tb"

app.on(.PUT, ":name", body: .stream) { req async throws -> Response in
    guard let name = req.parameters.get("name").flatMap(safeName) else { throw Abort(.badRequest) }
    let upload = try Upload(name: name, size: 0, eventLoop: req.eventLoop)
    do {
        for try await buffer in req.body {
            upload.write(buffer, io: req.application.fileio, eventLoop: req.eventLoop)
            try await upload.written.get()
        }
        try upload.finish()
    } catch {
        upload.abandon()
        throw error
    }
    let body = #"{"name":"\#(name)","size":\#(upload.received)}"#
    return Response(status: .created, body: .init(string: body))
}

/// One upload socket's state. websocket-kit calls back on the socket's event loop only.
final class Session: @unchecked Sendable {
    let ws: WebSocket
    let io: NonBlockingFileIO
    let loop: EventLoop
    var upload: Upload?

    init(ws: WebSocket, io: NonBlockingFileIO, loop: EventLoop) {
        self.ws = ws
        self.io = io
        self.loop = loop
    }

    func text(_ text: String) {
        struct Begin: Decodable { var type: String; var name: String; var size: Int }
        guard upload == nil, let begin = try? JSONDecoder().decode(Begin.self, from: Data(text.utf8)), begin.type == "begin",
              let name = safeName(begin.name), let u = try? Upload(name: name, size: begin.size, eventLoop: loop) else {
            _ = ws.close(code: .policyViolation)
            return
        }
        upload = u
        ws.send(#"{"type":"ready","id":"\#(UUID().uuidString)","offset":0}"#)
        storeIfComplete()
    }

    func binary(_ buffer: ByteBuffer) {
        guard let u = upload, u.received + buffer.readableBytes <= u.size else {
            _ = ws.close(code: .policyViolation)
            return
        }
        u.write(buffer, io: io, eventLoop: loop)
        storeIfComplete()
    }

    private func storeIfComplete() {
        guard let u = upload, u.received == u.size else { return }
        upload = nil
        u.written.whenComplete { [ws] result in
            do {
                try result.get()
                try u.finish()
                ws.send(#"{"type":"stored","id":"\#(u.temporary.suffix(36))","name":"\#(u.name)","size":\#(u.size)}"#)
            } catch {
                u.abandon()
                _ = ws.close(code: .unexpectedServerError)
            }
        }
    }

    func closed() {
        upload?.abandon()
        upload = nil
    }
}

app.webSocket("ws", maxFrameSize: .init(integerLiteral: 1 << 24)) { req, ws in
    let session = Session(ws: ws, io: req.application.fileio, loop: req.eventLoop)
    ws.send(#"{"type":"hello","version":1,"auth":"none"}"#)
    ws.onText { _, text in session.text(text) }
    ws.onBinary { _, buffer in session.binary(buffer) }
    ws.onClose.whenComplete { _ in session.closed() }
}

try await app.execute()
try await app.asyncShutdown()
