import DataStreamCore
import UV

/// The transport an upload came over.
public enum UploadTransport: Int32, Sendable, CaseIterable {
    /// The native TCP protocol.
    case tcp = 1
    /// PyDataStream's TCP framing (size digits, then the bytes).
    case seedTCP = 2
    /// The native reliable-UDP protocol.
    case udp = 3
    /// PyDataStream's UDP datagrams.
    case seedUDP = 4
    /// An HTTP request body (`PUT /NAME`).
    case http = 5
    /// The browser page's WebSocket at `/ws`.
    case webSocket = 6

    public var name: String {
        switch self {
        case .tcp: "tcp"
        case .seedTCP: "seed-tcp"
        case .udp: "udp"
        case .seedUDP: "seed-udp"
        case .http: "http"
        case .webSocket: "websocket"
        }
    }
}

/// One upload as an event names it.
public struct UploadDescription: Sendable, Equatable {
    public var transport: UploadTransport
    /// The client's address (`host:port`, `[v6]:port`), or "?" if the socket could not tell.
    public var peer: String
    /// The client's file name (native protocols; seed uploads have none).
    public var clientName: String?
    /// The native upload id in hex (nil for seed uploads).
    public var uploadID: String?
    /// The size the client announced.
    public var size: UInt64

    public init(transport: UploadTransport, peer: String, clientName: String? = nil, uploadID: String? = nil, size: UInt64) {
        self.transport = transport
        self.peer = peer
        self.clientName = clientName
        self.uploadID = uploadID
        self.size = size
    }
}

/// What happened to an upload, for a program embedding the server (`Server.onEvent`).
/// Delivered on the loop thread, after the fact it reports (a stored file is under its final
/// name when `.stored` arrives).
public enum UploadEvent: Sendable, Equatable {
    /// An upload began: its size was read (seed) or its file was opened or resumed (native).
    case started(UploadDescription)
    /// An upload is complete and under its final name.
    case stored(StoredUpload)
    /// An upload ended without being stored. `resumable`: its partial stays, and the client
    /// can send it again from where it stopped (native protocols only).
    case failed(UploadDescription, reason: String, code: UInt16, resumable: Bool)
}

/// A file now under its final name.
public struct StoredUpload: Sendable, Equatable {
    public var upload: UploadDescription
    /// The name it was stored under, in the target directory.
    public var storedName: String
    /// The target directory joined with `storedName`.
    public var path: String
    /// The digest the server computed and checked against the client's (native protocols);
    /// empty for seed uploads, whose protocol carries none.
    public var digest: [UInt8]
    /// `xxh3-128` or `sha256`; nil when `digest` is empty.
    public var digestAlgorithm: String?
    /// Seconds from the upload's start (its size read, its file opened) to its storing.
    public var duration: Double = 0
}

extension Server {
    /// Reports an event if a handler is set (the event is only built then).
    /// The completion hook runs for `.stored` events.
    @inline(__always)
    func emit(_ event: @autoclosure () -> UploadEvent) {
        guard onEvent != nil || hook != nil else { return }
        let e = event()
        if let hook, case .stored(let stored) = e { hook.stored(stored) }
        onEvent?(e)
    }

    /// A `.stored` event for a native upload.
    func nativeStored(_ header: FileHeader, transport: UploadTransport, peer: String, storedName: String, digest: [UInt8], startedAt: UInt64) -> UploadEvent {
        .stored(StoredUpload(upload: .native(header, transport: transport, peer: peer), storedName: storedName,
                             path: store.finalPath(storedName), digest: digest, digestAlgorithm: header.digest.name, duration: Server.seconds(since: startedAt)))
    }

    /// A `.stored` event for a seed upload.
    func seedStored(transport: UploadTransport, peer: String, size: UInt64, storedName: String, startedAt: UInt64) -> UploadEvent {
        .stored(StoredUpload(upload: .init(transport: transport, peer: peer, size: size), storedName: storedName,
                             path: store.finalPath(storedName), digest: [], digestAlgorithm: nil, duration: Server.seconds(since: startedAt)))
    }

    /// Seconds from the monotonic instant `start` to now.
    static func seconds(since start: UInt64) -> Double {
        let now = monotonicNanoseconds()
        return now > start ? Double(now - start) / 1e9 : 0
    }
}

extension UploadDescription {
    static func native(_ header: FileHeader, transport: UploadTransport, peer: String) -> UploadDescription {
        .init(transport: transport, peer: peer, clientName: header.name, uploadID: "\(header.uploadID)", size: header.size)
    }
}
