/// The state of one TCP connection, seed or native protocol: bytes and events in, actions out.
///
/// A value that touches no socket and no file: the connection driver feeds it what libuv
/// reports (bytes, end of stream, completed file operations) and carries out the action each
/// event returns. Bad peer input returns a close action with a typed reason and never traps.
/// After the connection is closed, every event returns "nothing to do".
///
/// States (see the diagram in docs/PROTOCOL.md):
/// awaitingFirstByte → seed: seedSize → seedReceiving → seedFinishing → closed
///                   → native: awaitingHello → [authenticating] → awaitingHeader
///                     → opening → receiving → awaitingEnd → verifying → finalising → awaitingHeader …
/// Any state → failed (after a close action) → closed.
public struct ConnectionStateMachine {
    /// Server settings the machine needs.
    public struct Configuration: Sendable {
        /// When set, native clients must authenticate with it.
        public var token: String?
        /// The largest file accepted (checked before a byte is written).
        public var maxFileSize: UInt64
        /// The longest client file name, in UTF-8 bytes.
        public var maxNameLength: Int
        /// Whether seed-framed uploads are accepted (off on non-loopback listeners unless allowed:
        /// the seed protocol cannot authenticate).
        public var seedProtocolAllowed: Bool
        /// Whether a connection whose first byte begins an HTTP method (an ASCII capital) is
        /// handed to the HTTP driver; otherwise it is a native connection with a bad frame.
        public var httpAllowed: Bool
        public init(token: String? = nil, maxFileSize: UInt64 = 1 << 40, maxNameLength: Int = NamePolicy.defaultMaxLength, seedProtocolAllowed: Bool = true, httpAllowed: Bool = false) {
            self.token = token
            self.maxFileSize = maxFileSize
            self.maxNameLength = maxNameLength
            self.seedProtocolAllowed = seedProtocolAllowed
            self.httpAllowed = httpAllowed
        }
    }

    /// What happens to the current upload's partial file when the connection ends.
    public enum PartialDisposition: Hashable, Sendable {
        /// There is no upload in progress.
        case none
        /// Keep it: a native upload that can be resumed.
        case keep
        /// Delete it: a seed upload (it cannot be resumed) or a refused one.
        case discard
    }

    /// What the driver must do after an event.
    public enum Action: Hashable, Sendable {
        /// Nothing more.
        case none
        /// The rest of the input cannot be taken now: hold it, stop reading, and feed it again
        /// after the pending file operation has been answered.
        case wait
        /// Send these bytes to the peer.
        case send([UInt8])
        /// Seed: create a fresh partial file; data follows at once (writes wait for the open).
        case startSeedUpload(declaredSize: UInt64)
        /// Seed: all bytes are in. Write `filePrefix` (digits that belong to the file) before the
        /// data, store the file (`size` bytes) under a generated name, then call `seedStored` or `uploadFailed`.
        case finishSeedUpload(filePrefix: SeedDigits, size: UInt64)
        /// Native: open (or resume) the partial of this upload, then call `uploadOpened(heldBytes:)` or `uploadOpenFailed`.
        case openUpload(FileHeader)
        /// Native: all bytes and the END frame are in. Flush the writes and call `digestComputed`.
        case verifyUpload
        /// Native: the digest matched. Store the file (fsync first if configured), then call `uploadCommitted` or `uploadFailed`.
        case commitUpload
        /// Native: the digest did not match. Delete the partial, then send `reply`.
        case discardUpload(reply: [UInt8])
        /// End the connection: send `reply` if any, deal with the partial, close. `reason` is nil for a normal end.
        case close(reply: [UInt8]?, reason: ProtocolError?, partial: PartialDisposition)
        /// The client speaks HTTP: hand the stream and the input not consumed (all of it) to
        /// the HTTP driver. The machine takes no further event.
        case handOverToHTTP
    }

    /// The answer to `bytesReceived`: how much of the input was taken, how much of that (its
    /// start) is file data for the current upload, and the action to carry out after queueing the data.
    public struct Step: Hashable, Sendable {
        public var consumed: Int
        public var fileBytes: Int
        public var action: Action
        public init(consumed: Int, fileBytes: Int = 0, action: Action = .none) {
            self.consumed = consumed
            self.fileBytes = fileBytes
            self.action = action
        }
    }

    /// The machine's states. Not part of its public face: internal, and `@usableFromInline` only
    /// so that the queries a driver makes on every read (`expectsInput`, `fileBytesExpected`,
    /// ...) are inlined into it. Called across the module boundary, each first copied the whole
    /// machine out of the driver's object (a memcpy and a retain and release of every reference
    /// in it), several times per upload.
    @usableFromInline enum State {
        case awaitingFirstByte
        case seedSize(digits: SeedDigits)
        case seedReceiving(SeedFraming)
        /// Every byte is in; `size` is the file's (storing it).
        case seedFinishing(size: UInt64)
        case awaitingHello
        case authenticating(nonce: [UInt8])
        case awaitingHeader
        case opening(FileHeader)
        case receiving(FileHeader, remaining: UInt64)
        case awaitingEnd(FileHeader)
        case verifying(FileHeader, expected: [UInt8])
        case finalising(FileHeader, digest: [UInt8])
        case failed
        case closed
        /// Handed to the HTTP driver.
        case handedOver
    }

    public let configuration: Configuration
    @usableFromInline private(set) var state: State = .awaitingFirstByte
    private var frames = FrameAccumulator()
    /// The peer closed while a native upload was verifying or finalising: finish it, then close.
    private var peerClosed = false

    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    /// A short name of the current state, for logs and tests.
    public var stateName: String {
        switch state {
        case .awaitingFirstByte: return "awaitingFirstByte"
        case .seedSize: return "seedSize"
        case .seedReceiving: return "seedReceiving"
        case .seedFinishing: return "seedFinishing"
        case .awaitingHello: return "awaitingHello"
        case .authenticating: return "authenticating"
        case .awaitingHeader: return "awaitingHeader"
        case .opening: return "opening"
        case .receiving: return "receiving"
        case .awaitingEnd: return "awaitingEnd"
        case .verifying: return "verifying"
        case .finalising: return "finalising"
        case .failed: return "failed"
        case .closed: return "closed"
        case .handedOver: return "handedOver"
        }
    }

    /// Whether the connection speaks the seed protocol (known after the first byte).
    public var isSeed: Bool {
        switch state {
        case .seedSize, .seedReceiving, .seedFinishing: return true
        default: return false
        }
    }

    /// Whether the next move is the client's (so its silence counts against the idle timeout);
    /// false while the server opens, verifies or stores a file.
    @inlinable public var isWaitingForClient: Bool {
        switch state {
        case .awaitingFirstByte, .seedSize, .seedReceiving, .awaitingHello, .authenticating, .awaitingHeader, .receiving, .awaitingEnd: return true
        case .seedFinishing, .opening, .verifying, .finalising, .failed, .closed, .handedOver: return false
        }
    }

    /// Whether the server reads from the client in this state. False once a seed upload has
    /// all its bytes: the seed protocol has nothing after the file, and the server stores it
    /// and closes without reading further (so without a system call for the client's end, or
    /// polling for it); what the client sends after that goes with the connection. False once
    /// closed or failed.
    @inlinable public var expectsInput: Bool {
        switch state {
        case .seedFinishing, .failed, .closed, .handedOver: return false
        default: return true
        }
    }

    /// Seed, once the size field is read: the smallest and the largest size it can mean (they
    /// differ only when the file may begin with digits; see `SeedFraming`).
    @inlinable public var seedSizeRange: ClosedRange<UInt64>? {
        guard case .seedReceiving(let framing) = state else { return nil }
        return min(framing.smallestSize, framing.declaredSize)...framing.declaredSize
    }

    /// Whether an upload has begun and not ended: seed size digits or a FILE header received,
    /// the file not yet stored or refused. A server that shuts down gracefully lets these finish.
    @inlinable public var hasUploadInProgress: Bool {
        switch state {
        case .seedSize(let digits): return !digits.isEmpty
        case .seedReceiving, .seedFinishing, .opening, .receiving, .awaitingEnd, .verifying, .finalising: return true
        case .awaitingFirstByte, .awaitingHello, .authenticating, .awaitingHeader, .failed, .closed, .handedOver: return false
        }
    }

    /// Whether file bytes may still be arriving for the current upload (a write failure must
    /// then end the upload at once rather than wait for the next file operation to report it).
    @inlinable public var isReceivingFileBytes: Bool {
        switch state {
        case .seedReceiving, .receiving, .awaitingEnd: return true
        default: return false
        }
    }

    /// The upload in progress on a native connection, if any.
    public var currentUpload: FileHeader? {
        switch state {
        case .opening(let h), .receiving(let h, _), .awaitingEnd(let h), .verifying(let h, _), .finalising(let h, _): return h
        default: return nil
        }
    }

    /// What a connection refused before its first byte is told once that byte arrives: the
    /// ERROR frame, unless the byte begins a seed upload (a digit), whose protocol has no reply.
    public static func refusal(_ error: ProtocolError, firstByte: UInt8) -> [UInt8]? {
        firstByte >= 0x30 && firstByte <= 0x39 ? nil : Wire.error(error)
    }

    // MARK: - Events

    /// Bytes arrived. Call again with the rest of the input while `consumed` is less than its
    /// count and the action is not `.wait` or `.close`.
    public mutating func bytesReceived(_ input: UnsafeRawBufferPointer) -> Step {
        guard !input.isEmpty else { return Step(consumed: 0) }
        switch state {
        case .awaitingFirstByte:
            if configuration.httpAllowed, input[0] >= 0x41, input[0] <= 0x5A {
                state = .handedOver
                return Step(consumed: 0, action: .handOverToHTTP)
            }
            if isDigit(input[0]) && !configuration.seedProtocolAllowed {
                return fail(.seedProtocolDisabled, partial: .none, reply: false, consumed: input.count)
            }
            state = isDigit(input[0]) ? .seedSize(digits: []) : .awaitingHello
            return bytesReceived(input)

        case .seedSize(var digits):
            if !digits.isEmpty {
                var j = 0
                while j < input.count, isDigit(input[j]) { j += 1 }
                if j < input.count {
                    // The reads so far held digits only, and this one holds more than digits:
                    // the client wrote its size apart from the file, as the seed client does.
                    // The size is those digits, this read begins the file, and a shorter
                    // split would be a cut-short upload.
                    return startSeed(digits, sizeEndsTheRun: true, consumed: 0)
                }
            }
            var i = 0
            while i < input.count, !digits.isFull, isDigit(input[i]) {
                digits.append(input[i])
                i += 1
            }
            if i == input.count && !digits.isFull {
                state = .seedSize(digits: digits)
                return Step(consumed: i)
            }
            // The run ended inside this read (or filled the field): the split rule decides.
            return startSeed(digits, sizeEndsTheRun: false, consumed: i)

        case .seedReceiving(var framing):
            let n = Int(min(UInt64(input.count), framing.remainingCapacity))
            if n == 0 {
                return fail(.trailingBytes(declared: framing.declaredSize, received: framing.received + UInt64(input.count)), partial: .discard, reply: false, consumed: input.count)
            }
            framing.dataReceived(UInt64(n))
            if framing.isCompleteWithoutEOF {
                state = .seedFinishing(size: framing.fileSize!)
                return Step(consumed: n, fileBytes: n, action: .finishSeedUpload(filePrefix: framing.fileDigitsPrefix!, size: framing.fileSize!))
            }
            state = .seedReceiving(framing)
            return Step(consumed: n, fileBytes: n)

        case .seedFinishing(let size):
            return fail(.trailingBytes(declared: size, received: size + UInt64(input.count)), partial: .discard, reply: false, consumed: input.count)

        case .receiving(let header, let remaining):
            let n = Int(min(UInt64(input.count), remaining))
            state = remaining == UInt64(n) ? .awaitingEnd(header) : .receiving(header, remaining: remaining - UInt64(n))
            return Step(consumed: n, fileBytes: n)

        case .opening, .verifying, .finalising:
            return Step(consumed: 0, action: .wait)

        case .awaitingHello, .authenticating, .awaitingHeader, .awaitingEnd:
            let (consumed, outcome) = frames.append(input)
            switch outcome {
            case .needMore:
                return Step(consumed: consumed)
            case .tooLarge(let length):
                return fail(.frameTooLarge(length: length, limit: Wire.maxControlPayload), partial: currentUpload == nil ? .none : .keep, reply: true, consumed: input.count)
            case .frame(let type):
                var step = handleFrame(type: type, payload: frames.payload)
                frames.reset()
                step.consumed = consumed
                return step
            }

        case .failed, .closed, .handedOver:
            return Step(consumed: input.count)
        }
    }

    /// How many of the next input bytes are file bytes, for sure: the caller may move up to
    /// this many straight from the socket into the file (`fileBytesMovedDirectly`) instead of
    /// showing them to `bytesReceived`. 0 when the machine is not receiving file bytes.
    @inlinable public var fileBytesExpected: UInt64 {
        switch state {
        case .seedReceiving(let framing): framing.remainingCapacity
        case .receiving(_, let remaining): remaining
        default: 0
        }
    }

    /// `n` file bytes (at most `fileBytesExpected`) went from the socket to the file without
    /// passing through `bytesReceived`: the same transitions as if they had.
    public mutating func fileBytesMovedDirectly(_ n: UInt64) -> Action {
        guard n > 0, n <= fileBytesExpected else { return n == 0 ? .none : unexpectedEvent("fileBytesMovedDirectly") }
        switch state {
        case .seedReceiving(var framing):
            framing.dataReceived(n)
            if framing.isCompleteWithoutEOF {
                state = .seedFinishing(size: framing.fileSize!)
                return .finishSeedUpload(filePrefix: framing.fileDigitsPrefix!, size: framing.fileSize!)
            }
            state = .seedReceiving(framing)
            return .none
        case .receiving(let header, let remaining):
            state = remaining == n ? .awaitingEnd(header) : .receiving(header, remaining: remaining - n)
            return .none
        default:
            return unexpectedEvent("fileBytesMovedDirectly")
        }
    }

    /// The driver's clock ran out: no upload began in time (`.headerTimeout`) or the client
    /// sent nothing for too long (`.idleTimeout`). Native clients get an ERROR frame and keep
    /// their partial for resume; a seed partial is deleted.
    public mutating func timedOut(_ error: ProtocolError) -> Action {
        switch state {
        case .failed, .closed, .handedOver:
            return .none
        case .seedSize, .seedReceiving, .seedFinishing:
            return fail(error, partial: .discard, reply: false)
        case .awaitingFirstByte:
            return fail(error, partial: .none, reply: false)
        default:
            return fail(error, partial: currentUpload == nil ? .none : .keep, reply: true)
        }
    }

    /// The server is shutting down: a connection with no upload in progress ends now (native
    /// clients are told why); one with an upload in progress goes on (`.none`), and the driver
    /// asks again once `hasUploadInProgress` is false.
    public mutating func shuttingDown() -> Action {
        guard !hasUploadInProgress else { return .none }
        switch state {
        case .failed, .closed, .handedOver:
            return .none
        case .awaitingFirstByte, .seedSize:
            return fail(.shuttingDown, partial: .none, reply: false)
        default:
            return fail(.shuttingDown, partial: .none, reply: true)
        }
    }

    /// The peer closed its side (EOF).
    public mutating func endOfStream() -> Action {
        switch state {
        case .awaitingFirstByte, .awaitingHello, .authenticating, .awaitingHeader:
            state = .closed
            return .close(reply: nil, reason: nil, partial: .none)
        case .seedSize(let digits):
            // Only digits came: the size and a file of digits, or a size and nothing.
            guard let framing = try? SeedFraming(digits: digits, maxFileSize: configuration.maxFileSize) else {
                return fail(.invalidSeedSize(digits: String(decoding: digits, as: UTF8.self)), partial: .none, reply: false)
            }
            return finishSeedAtEOF(framing)
        case .seedReceiving(let framing):
            return finishSeedAtEOF(framing)
        case .seedFinishing:
            return .none
        case .opening(let h), .awaitingEnd(let h):
            return fail(.unexpectedEndOfStream(received: 0, expected: h.size), partial: .keep, reply: false)
        case .receiving(let h, let remaining):
            return fail(.unexpectedEndOfStream(received: h.size - remaining, expected: h.size), partial: .keep, reply: false)
        case .verifying, .finalising:
            peerClosed = true
            return .none
        case .failed, .closed, .handedOver:
            return .none
        }
    }

    /// The connection failed underneath (for example a reset). Ends it whatever the state.
    public mutating func connectionFailed(_ reason: String) -> Action {
        switch state {
        case .verifying, .finalising:
            peerClosed = true
            return .none
        case .failed, .closed, .handedOver:
            return .none
        default:
            let partial: PartialDisposition = isSeed ? .discard : (currentUpload == nil ? .none : .keep)
            return fail(.connectionFailed(reason: reason), partial: partial, reply: false)
        }
    }

    /// Native: the partial is open; the server holds `heldBytes` of it already (0 for a new upload).
    public mutating func uploadOpened(heldBytes: UInt64) -> Action {
        guard case .opening(let header) = state else { return unexpectedEvent("uploadOpened") }
        precondition(heldBytes <= header.size, "the store never reports more bytes than the announced size")
        state = heldBytes == header.size ? .awaitingEnd(header) : .receiving(header, remaining: header.size - heldBytes)
        return .send(Wire.ready(uploadID: header.uploadID, offset: heldBytes))
    }

    /// Native: the partial could not be opened (busy id, resume mismatch, storage error).
    /// The connection goes on; the client gets a RESULT for this file.
    public mutating func uploadOpenFailed(_ error: ProtocolError) -> Action {
        guard case .opening(let header) = state else { return unexpectedEvent("uploadOpenFailed") }
        state = .awaitingHeader
        let status: Wire.ResultStatus
        switch error {
        case .storageFailed, .diskFull: status = .storageFailed
        default: status = .rejected
        }
        return .send(Wire.result(UploadResult(uploadID: header.uploadID, status: status, digestAlgorithm: header.digest, digest: [], storedName: "", message: error.description)))
    }

    /// Native: the writes are flushed and this is the digest of the whole partial file.
    public mutating func digestComputed(_ digest: [UInt8]) -> Action {
        guard case .verifying(let header, let expected) = state else { return unexpectedEvent("digestComputed") }
        if digest == expected {
            state = .finalising(header, digest: digest)
            return .commitUpload
        }
        state = .awaitingHeader
        let reply = Wire.result(UploadResult(uploadID: header.uploadID, status: .digestMismatch, digestAlgorithm: header.digest, digest: digest, storedName: "",
                                             message: "digest mismatch: client \(expected.hexString), server \(digest.hexString)"))
        if peerClosed {
            state = .closed
            return .close(reply: nil, reason: .unexpectedEndOfStream(received: header.size, expected: header.size), partial: .discard)
        }
        return .discardUpload(reply: reply)
    }

    /// Native: the file is stored under `storedName` (relative to the target directory).
    public mutating func uploadCommitted(storedName: String) -> Action {
        guard case .finalising(let header, let digest) = state else { return unexpectedEvent("uploadCommitted") }
        state = .awaitingHeader
        if peerClosed {
            state = .closed
            return .close(reply: nil, reason: nil, partial: .none)
        }
        return .send(Wire.result(UploadResult(uploadID: header.uploadID, status: .stored, digestAlgorithm: header.digest, digest: digest, storedName: storedName, message: "stored")))
    }

    /// A file operation of the current upload failed (write, sync, link). Native uploads keep
    /// their partial when it can still be resumed; seed uploads are discarded.
    public mutating func uploadFailed(_ error: ProtocolError) -> Action {
        switch state {
        case .seedReceiving, .seedFinishing, .seedSize:
            return fail(error, partial: .discard, reply: false)
        case .receiving, .awaitingEnd, .verifying:
            if peerClosed { return fail(error, partial: .keep, reply: false) }
            return fail(error, partial: .keep, reply: true)
        case .finalising(let header, let digest):
            if peerClosed { return fail(error, partial: .keep, reply: false) }
            state = .awaitingHeader
            return .send(Wire.result(UploadResult(uploadID: header.uploadID, status: .storageFailed, digestAlgorithm: header.digest, digest: digest, storedName: "", message: error.description)))
        case .failed, .closed, .handedOver, .awaitingHeader:
            // Already failed, or a late report for an upload that was answered.
            return .none
        default:
            return unexpectedEvent("uploadFailed")
        }
    }

    /// Seed: the file is stored. The server closes the connection, as the seed server does.
    public mutating func seedStored() -> Action {
        guard case .seedFinishing = state else { return unexpectedEvent("seedStored") }
        state = .closed
        return .close(reply: nil, reason: nil, partial: .none)
    }

    // MARK: - Helpers

    private mutating func handleFrame(type: UInt8, payload: ArraySlice<UInt8>) -> Step {
        let frameType = Wire.FrameType(rawValue: type)
        switch (state, frameType) {
        case (.awaitingHello, .hello):
            guard payload.count >= 6, Array(payload.prefix(4)) == Wire.magic else {
                return fail(.badMagic, partial: .none, reply: true)
            }
            let version = payload[payload.startIndex + 4]
            guard version == Wire.version else { return fail(.unsupportedVersion(version), partial: .none, reply: true) }
            // Version 1 defines no flags and no more payload: anything else is refused, so a
            // later version can give them a meaning without old servers silently ignoring it.
            guard payload.count == Wire.helloLength else {
                return fail(.malformedFrame(type: type, detail: "HELLO of \(payload.count) bytes, version 1 has \(Wire.helloLength)"), partial: .none, reply: true)
            }
            let flags = payload[payload.startIndex + 5]
            let reserved = UInt16(payload[payload.startIndex + 6]) << 8 | UInt16(payload[payload.startIndex + 7])
            guard flags == 0, reserved == 0 else {
                return fail(.malformedFrame(type: type, detail: "HELLO flags 0x\(String(flags, radix: 16)) and reserved 0x\(String(reserved, radix: 16)): version 1 defines none"), partial: .none, reply: true)
            }
            if configuration.token != nil {
                let nonce = Authentication.nonce()
                state = .authenticating(nonce: nonce)
                return Step(consumed: 0, action: .send(Wire.welcome(nonce: nonce)))
            }
            state = .awaitingHeader
            return Step(consumed: 0, action: .send(Wire.welcome(nonce: nil)))

        case (.authenticating(let nonce), .auth):
            guard let token = configuration.token, Authentication.verify(token: token, nonce: nonce, response: Array(payload)) else {
                return fail(.authenticationFailed, partial: .none, reply: true)
            }
            state = .awaitingHeader
            return Step(consumed: 0, action: .send(Wire.authOK()))

        case (.authenticating, _):
            return fail(.authenticationRequired, partial: .none, reply: true)

        case (.awaitingHeader, .file):
            do throws(ProtocolError) {
                let (id, size, algo, rawName) = try Wire.decodeFile(payload)
                guard let digest = DigestAlgorithm(rawValue: algo) else { throw .unsupportedDigest(algo) }
                guard size <= configuration.maxFileSize else { throw .fileTooLarge(size: size, limit: configuration.maxFileSize) }
                let name = try NamePolicy.sanitise(rawName, maxLength: configuration.maxNameLength)
                let header = FileHeader(uploadID: id, size: size, digest: digest, name: name)
                state = .opening(header)
                return Step(consumed: 0, action: .openUpload(header))
            } catch {
                return fail(error, partial: .none, reply: true)
            }

        case (.awaitingHeader, .bye):
            state = .closed
            return Step(consumed: 0, action: .close(reply: nil, reason: nil, partial: .none))

        case (.awaitingEnd(let header), .end):
            guard payload.count == header.digest.digestLength else {
                return fail(.malformedFrame(type: type, detail: "END carries \(payload.count) digest bytes, \(header.digest.name) has \(header.digest.digestLength)"), partial: .keep, reply: true)
            }
            state = .verifying(header, expected: Array(payload))
            return Step(consumed: 0, action: .verifyUpload)

        default:
            return fail(.unexpectedFrame(type: type, state: stateName), partial: currentUpload == nil ? .none : .keep, reply: true)
        }
    }

    private mutating func startSeed(_ digits: SeedDigits, sizeEndsTheRun: Bool, consumed: Int) -> Step {
        do {
            let framing = try SeedFraming(digits: digits, maxFileSize: configuration.maxFileSize, sizeEndsTheRun: sizeEndsTheRun)
            state = .seedReceiving(framing)
            return Step(consumed: consumed, action: .startSeedUpload(declaredSize: framing.declaredSize))
        } catch {
            return fail(error, partial: .none, reply: false, consumed: consumed)
        }
    }

    private mutating func finishSeedAtEOF(_ framing: SeedFraming) -> Action {
        guard let prefix = framing.fileDigitsPrefix, let size = framing.fileSize else {
            return fail(.unexpectedEndOfStream(received: framing.received, expected: framing.declaredSize), partial: .discard, reply: false)
        }
        state = .seedFinishing(size: size)
        return .finishSeedUpload(filePrefix: prefix, size: size)
    }

    private mutating func fail(_ error: ProtocolError, partial: PartialDisposition, reply: Bool, consumed: Int = 0) -> Step {
        Step(consumed: consumed, action: fail(error, partial: partial, reply: reply))
    }

    private mutating func fail(_ error: ProtocolError, partial: PartialDisposition, reply: Bool) -> Action {
        state = .failed
        return .close(reply: reply ? Wire.error(error) : nil, reason: error, partial: partial)
    }

    private func unexpectedEvent(_ event: String) -> Action {
        switch state {
        case .failed, .closed, .handedOver: return .none
        default: preconditionFailure("\(event) in state \(stateName): the driver broke the machine's contract")
        }
    }

    private func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }
}

/// Collects one control frame (header and payload) across reads, into a buffer it reuses.
/// Used by the server's machine and by the sender. A value.
public struct FrameAccumulator: Sendable {
    public private(set) var buffer: [UInt8] = []

    /// What one `append` produced: nothing complete yet, a whole frame (its payload is in
    /// `payload` until `reset`), or a header announcing a payload over the limit.
    public enum Outcome: Sendable { case needMore, frame(type: UInt8), tooLarge(UInt32) }

    /// The buffer is allocated by the first `append`: a seed connection never sends a frame.
    public init() {}

    /// The payload of the completed frame.
    public var payload: ArraySlice<UInt8> { buffer[Wire.headerLength...] }

    /// Forgets the completed frame (call after handling it).
    public mutating func reset() { buffer.removeAll(keepingCapacity: true) }

    /// Takes bytes until one frame is complete; returns how many it took.
    public mutating func append(_ input: UnsafeRawBufferPointer) -> (Int, Outcome) {
        var taken = 0
        if buffer.capacity == 0 { buffer.reserveCapacity(512) }
        if buffer.count < Wire.headerLength {
            let n = min(Wire.headerLength - buffer.count, input.count)
            buffer.append(contentsOf: input[0..<n])
            taken = n
            if buffer.count < Wire.headerLength { return (taken, .needMore) }
        }
        let length = UInt32(buffer[1]) << 24 | UInt32(buffer[2]) << 16 | UInt32(buffer[3]) << 8 | UInt32(buffer[4])
        guard length <= Wire.maxControlPayload else { return (taken, .tooLarge(length)) }
        let want = Wire.headerLength + Int(length) - buffer.count
        let n = min(want, input.count - taken)
        buffer.append(contentsOf: input[taken..<(taken + n)])
        taken += n
        return buffer.count == Wire.headerLength + Int(length) ? (taken, .frame(type: buffer[0])) : (taken, .needMore)
    }
}
