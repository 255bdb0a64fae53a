import DataStreamCore
import HTTPParsing

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
    /// The native reliable-UDP receive machine: DATA for any chunk and length, FINISH (right or
    /// wrong), write completions and failures, timer polls and STATUS, in any order, against a
    /// model of the ring: every chunk is stored in its own free slot, written once, in order,
    /// from that slot, and nothing past the file; verification comes only once all is on disk.
    case udpReceiver = "udp-receiver"
    /// Command-line numbers (`FlagValue`): whatever the text, a value accepted lies in its range
    /// and is finite, and nothing traps.
    case flags
    /// HTTP requests: the parser (Debian's http_parser) and the HTTP connection machine fed
    /// arbitrary bytes in arbitrary chunks, every file operation answered, against a model: a
    /// stored body is exactly the bytes the parser delivered for it, never more than the limit,
    /// names are safe components, heads stay within their bound, and nothing traps.
    case httpRequests = "http-requests"
    /// multipart/form-data bodies: whatever the bytes, reading them in arbitrary pieces gives
    /// exactly the parts, bytes and ends that reading them whole gives, and nothing traps.
    case multipart
    /// The upload WebSocket: client frames through the frame codec into the upload machine,
    /// every file operation answered. Reading the bytes in arbitrary pieces gives the same
    /// messages, payload, refusal and close frames as reading them whole; an upload is written
    /// no further than its size and stored only when complete; names are safe; nothing traps.
    case webSocket = "websocket"

    /// Runs one input.
    public func run(_ data: UnsafeRawBufferPointer) {
        switch self {
        case .nativeFrames: FuzzTarget.machine(data, seedFirst: false)
        case .seedProtocol: FuzzTarget.machine(data, seedFirst: true)
        case .names: FuzzTarget.names(data)
        case .udpDatagrams: FuzzTarget.udp(data)
        case .udpReceiver: FuzzTarget.udpReceiver(data)
        case .flags: FuzzTarget.flags(data)
        case .httpRequests: FuzzTarget.http(data)
        case .multipart: FuzzTarget.multipart(data)
        case .webSocket: FuzzTarget.webSocket(data)
        }
    }

    // MARK: - Forms

    private static func multipart(_ data: UnsafeRawBufferPointer) {
        guard data.count > 1 else { return }
        let input = Array(data.dropFirst())
        // What a reading gives: part heads, bytes per part, ends; or where it failed.
        func read(pieces: (Int) -> Int) -> [String] {
            var p = MultipartParser(boundary: "bnd")
            var out: [String] = []
            var bytes: [UInt8] = []
            var at = 0
            input.withUnsafeBytes { all in
                while at < all.count, !p.isFinished {
                    let end = min(all.count, at + pieces(at))
                    var k = at
                    while k < end {
                        let n: Int
                        do throws(MultipartParser.Failure) {
                            n = try p.parse(UnsafeRawBufferPointer(rebasing: all[k..<end])) { event in
                                switch event {
                                case .partBegan(let part): out.append("begin \(part.field ?? "-") \(part.filename.map { Array($0) } ?? [])")
                                case .data(let b): bytes += b
                                case .carried(let b): bytes += b
                                case .partEnded: out.append("end \(bytes)"); bytes = []
                                case .finished: out.append("finished")
                                }
                            }
                        } catch {
                            out.append("failed")
                            return
                        }
                        if n == 0 { break }
                        k += n
                    }
                    at = end
                }
            }
            if !bytes.isEmpty { out.append("open \(bytes)") }
            return out
        }
        var choices = Choices(state: UInt64(data[0]) &+ UInt64(data.count))
        let whole = read { _ in input.count }
        let split = read { _ in 1 + choices.next(9) }
        precondition(whole == split, "pieces read \(split), whole \(whole)")
    }

    // MARK: - HTTP

    private static func http(_ data: UnsafeRawBufferPointer) {
        guard !data.isEmpty else { return }
        let maxFileSize: UInt64 = 4096
        var choices = Choices(state: UInt64(data[0]) &+ UInt64(data.count))
        let parser = HTTPRequestParser(maxHeadBytes: 512)
        var m = HTTPConnectionMachine(configuration: .init(maxFileSize: maxFileSize, maxNameLength: 64, headTimeout: 10, idleTimeout: 20), now: 0)
        var body: UInt64 = 0
        var uploading = false
        var now: UInt64 = 0
        // The one tus upload the model's store holds: its length, the bytes held, and the
        // offset of the PATCH in progress (nil: a PUT).
        var tusLength: UInt64 = 1000, tusHeld: UInt64 = 0
        var patchOffset: UInt64?

        // Carries out an action as the driver would; false once the connection is over.
        func handle(_ action: HTTPConnectionMachine.Action) -> Bool {
            switch action {
            case .none, .send:
                return true
            case .respond(let r, _):
                precondition((100...599).contains(r.status))
                uploading = false
                return handle(m.responseSent(now: now))
            case .serve:
                return handle(m.responseSent(now: now))
            case .createTusUpload(let name, let length):
                if let name { checkName(Array(name.utf8), accepted: name) }
                precondition(length <= maxFileSize, "a tus length over the limit was created")
                if choices.next(4) == 0 { return handle(m.uploadRefused(.serverBusy(reason: "fuzz"))) }
                (tusLength, tusHeld) = (length, 0)
                return handle(m.tusCreated(UploadID(bytes: [UInt8](repeating: 7, count: 16)), now: 0))
            case .lookUpTusUpload:
                return handle(choices.next(4) == 0 ? m.tusMissing() : m.tusFound(offset: tusHeld, length: tusLength))
            case .terminateTusUpload:
                return handle(choices.next(3) == 0 ? m.uploadRefused(.uploadBusy) : m.tusTerminated())
            case .resumeTusUpload(_, let offset):
                guard offset == tusHeld else { return handle(m.uploadRefused(.resumeMismatch(detail: "fuzz"))) }
                body = 0
                uploading = true
                patchOffset = offset
                return handle(choices.next(6) == 0 ? m.tusMissing() : m.uploadOpened(tusLength: tusLength))
            case .keepUpload:
                precondition(uploading && patchOffset != nil && patchOffset! + body < tusLength, "an unfinished PATCH kept past its length")
                tusHeld = patchOffset! + body
                uploading = false
                patchOffset = nil
                return handle(m.uploadKept(now: 0))
            case .openUpload(let name, let declared):
                if let name { checkName(Array(name.utf8), accepted: name) }
                precondition(declared.map { $0 <= maxFileSize } ?? true, "a length over the limit reached the open")
                body = 0
                uploading = true
                patchOffset = nil
                return handle(choices.next(5) == 0 ? m.uploadRefused(.diskFull(reason: "fuzz")) : m.uploadOpened())
            case .commitUpload(let size):
                if let offset = patchOffset {
                    precondition(uploading && offset + body == tusLength && size == tusLength, "a tus upload stored at \(offset + body) of \(tusLength)")
                    tusHeld = 0
                } else {
                    precondition(uploading && size == body, "stored \(size) bytes, the parser delivered \(body)")
                }
                precondition(size <= maxFileSize)
                return handle(choices.next(4) == 0 ? m.uploadFailed(.storageFailed(reason: "fuzz")) : m.uploadStored(name: "stored"))
            case .abortUpload, .close:
                return false
            case .linger:
                return false
            case .upgradeToWebSocket(let switching):
                precondition(switching.starts(with: Array("HTTP/1.1 101 ".utf8)))
                return false
            case .readForm:
                return false  // the form reader is tested by MultipartParserTests over every split
            }
        }

        let input = Array(data.dropFirst())
        var at = 0
        input.withUnsafeBytes { all in
            outer: while at < all.count {
                now += UInt64(choices.next(3))
                m.inputArrived(now: now)
                let end = min(all.count, at + 1 + choices.next(64))
                while at < end {
                    guard m.takesInput else { break outer }
                    var open = true
                    let n: Int
                    do throws(HTTPRequestParser.Failure) {
                        n = try parser.parse(UnsafeRawBufferPointer(rebasing: all[at..<end])) { event in
                            guard open else { return }
                            switch event {
                            case .head(let head):
                                precondition(head.target.unicodeScalars.count <= 512, "a head past its bound")  // each byte is at most one scalar
                                open = handle(m.headReceived(head))
                            case .body(let b):
                                open = handle(m.bodyReceived(b.count))
                                if open {
                                    body += UInt64(b.count)  // the driver writes only bytes the machine took
                                    precondition(body <= maxFileSize, "a body past the limit kept going")
                                    if let offset = patchOffset { precondition(offset + body <= tusLength, "a PATCH past the upload's length kept going") }
                                }
                            case .end:
                                open = handle(m.messageComplete())
                            }
                        }
                    } catch {
                        _ = handle(m.parseFailed(headTooLarge: error.isHeadTooLarge, detail: error.description))
                        break outer
                    }
                    if !open { break outer }
                    if n == 0 { break outer }
                    at += n
                }
                if choices.next(8) == 0 { if !handle(m.tick(now: now)) { break } }
            }
        }
        if !m.isClosed { _ = handle(m.endOfStream()) }
    }

    // MARK: - Command-line numbers

    private static func flags(_ data: UnsafeRawBufferPointer) {
        let text = String(decoding: data, as: UTF8.self)
        if let v = try? FlagValue.integer(text, flag: "--n", in: -5...65_535) { precondition((-5...65_535).contains(v)) }
        if let v = try? FlagValue.port(text, flag: "--port") { precondition((0...65_535).contains(v)) }
        if let v = try? FlagValue.seconds(text, flag: "--t", in: 0.001...FlagValue.longestSeconds) {
            precondition(v.isFinite && v >= 0.001 && v <= FlagValue.longestSeconds)
            precondition(TimeLimit.units(v, perSecond: 1e9) != nil)  // converts without trapping
        }
        if let v = try? FlagValue.number(text, flag: "--r", in: 0...1e6, unit: "MB/s") { precondition(v.isFinite && v >= 0 && v <= 1e6) }
        if let v = try? FlagValue.bytes(text, flag: "--b", in: 4096...(1 << 40)) { precondition(v >= 4096 && v <= 1 << 40) }
        if let d = Double(text) { _ = TimeLimit.units(d, perSecond: 1e9) }  // any double, even inf or nan
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
            case .close, .handOverToHTTP:
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

    // MARK: - The reliable-UDP receive machine

    private static func udpReceiver(_ data: UnsafeRawBufferPointer) {
        guard data.count >= 4 else { return }
        // A small session: chunks of 1-64 bytes, a ring of 1-40 slots, up to ~100 chunks.
        let chunkSize = 1 + Int(data[0] % 64)
        let window = UInt32(1 + data[1] % 40)
        let totalBytes = UInt64(Int(data[2] % 100) * chunkSize + Int(data[3]) % chunkSize)
        var configuration = ReliableUDPReceiver.Configuration(chunkSize: chunkSize, totalBytes: totalBytes, windowChunks: window)
        configuration.flushBytes = chunkSize * (1 + Int(data[0] >> 6))
        var r = ReliableUDPReceiver(configuration, now: 0)
        let count = r.chunkCount
        precondition(UInt64(count) == (totalBytes + UInt64(chunkSize) - 1) / UInt64(chunkSize), "\(count) chunks for \(totalBytes) bytes")

        // The model: which chunk each slot holds until its write completes, and the chunks on disk.
        var slots = [UInt32?](repeating: nil, count: Int(window))
        var written: UInt32 = 0
        var inFlight: ReliableUDPReceiver.Write?
        var verifying = false
        var now: UInt64 = 0, packet: UInt64 = 0
        func known(_ c: UInt32) -> Bool { c < written || slots[Int(c % window)] == c }

        func apply(_ a: ReliableUDPReceiver.Actions) {
            if let w = a.write {
                precondition(inFlight == nil, "a second write while one is in flight")
                precondition(w.firstChunk == written && w.endChunk > w.firstChunk && w.endChunk <= count, "write of chunks \(w.firstChunk)..<\(w.endChunk) with \(written) of \(count) on disk")
                precondition(w.fileOffset == UInt64(w.firstChunk) * UInt64(chunkSize), "write at \(w.fileOffset) for chunk \(w.firstChunk)")
                var bytes = 0
                for c in w.firstChunk..<w.endChunk {
                    precondition(slots[Int(c % window)] == c, "chunk \(c) written from a slot that does not hold it")
                    bytes += r.length(ofChunk: c)
                }
                precondition(w.byteCount == bytes && w.fileOffset + UInt64(bytes) <= totalBytes, "write of \(w.byteCount) bytes at \(w.fileOffset) in a file of \(totalBytes)")
                inFlight = w
            }
            if a.verify {
                precondition(written == count && inFlight == nil && r.finish != nil, "verification with \(written) of \(count) chunks on disk")
                verifying = true
            }
        }

        func checkStatus() {
            let status = r.makeStatus(now: now)
            precondition(status.cumulative <= status.windowLimit && status.windowLimit <= count, "status \(status.cumulative) / \(status.windowLimit) of \(count)")
            var next = status.cumulative
            for (first, n) in status.nacks {
                precondition(n > 0 && first >= next && first + n <= count, "NACK \(first)+\(n) after \(next)")
                for c in first..<(first + n) { precondition(!known(c), "NACK for chunk \(c), which is held") }
                next = first + n
            }
        }

        var at = 4
        func byte() -> UInt8 {
            guard at < data.count else { return 0 }
            defer { at += 1 }
            return data[at]
        }
        while at < data.count, !r.isFinished {
            let op = byte()
            now += UInt64(op) * 37
            switch op % 8 {
            case 0, 1, 2, 3:
                let chunk = UInt32(byte()) % (count + 3)
                let right = chunk < count ? r.length(ofChunk: chunk) : chunkSize
                let length = op % 8 == 3 ? Int(byte()) % (chunkSize + 2) : right
                packet += 1
                switch r.data(chunk: chunk, length: length, packet: packet, now: now) {
                case .store(let slot):
                    precondition(chunk < count && length == right && slot == Int(chunk % window), "chunk \(chunk) stored in slot \(slot)")
                    precondition(slots[slot] == nil, "chunk \(chunk) stored over unwritten chunk \(slots[slot]!)")
                    precondition(chunk >= written, "chunk \(chunk) stored again after it was written")
                    slots[slot] = chunk
                case .duplicate:
                    precondition(chunk < count && length == right && known(chunk), "chunk \(chunk) called a duplicate, never held")
                case .outOfRange:
                    precondition(chunk >= count || chunk >= r.windowLimit, "chunk \(chunk) refused inside the window")
                case .badLength(let expected):
                    precondition(chunk < count && expected == right && length != right, "length \(length) refused for chunk \(chunk)")
                case .closed:
                    precondition(r.phase != .receiving, "data refused while receiving")
                }
                apply(r.poll(now: now))
            case 4:
                guard let w = inFlight else { break }
                for c in w.firstChunk..<w.endChunk { slots[Int(c % window)] = nil }
                written = w.endChunk
                inFlight = nil
                if op & 0x80 != 0 && op & 0x40 != 0 {
                    _ = r.writeFailed("fuzz")
                    precondition(r.isFinished && r.phase == .failed, "a failed write did not end the session")
                } else {
                    apply(r.writeCompleted(now: now))
                    precondition(r.released == written, "released \(r.released), \(written) written")
                }
            case 5:
                apply(r.poll(now: now))
                checkStatus()
            case 6:
                let claimed = op & 0x80 != 0 ? count &+ 1 : count
                let receiving = r.phase == .receiving
                apply(r.finish(UDPWire.Finish(chunkCount: claimed, algorithm: .sha256, digest: [UInt8](repeating: 0, count: 32)), now: now))
                // (Once verification has begun, a later FINISH of any kind is ignored.)
                if claimed != count && receiving { precondition(r.isFinished && r.phase == .failed, "a FINISH with the wrong chunk count was taken") }
            default:
                guard verifying else { break }
                _ = r.verified(op & 0x80 == 0, detail: "fuzz")
                if r.phase == .verifying { _ = r.committed(.success("stored.bin")) }
                precondition(r.isFinished, "verified and committed, yet not finished")
            }
            precondition(r.released <= r.flushed && r.flushed <= r.cumulative && r.cumulative <= count, "released \(r.released), flushed \(r.flushed), cumulative \(r.cumulative) of \(count)")
            precondition(r.windowLimit <= count && r.windowLimit &- r.released <= window, "window limit \(r.windowLimit) with \(r.released) released")
        }
    }

    // MARK: - WebSocket

    private static func webSocket(_ data: UnsafeRawBufferPointer) {
        guard data.count > 1 else { return }
        var choices = Choices(state: UInt64(data[0]) &+ UInt64(data.count) &* 31)
        let input = Array(data.dropFirst())
        let id = UploadID(bytes: [UInt8](repeating: 3, count: 16))

        // What one reading gives: messages, payload digests and closes, in order.
        func read(piece: () -> Int) -> [String] {
            let codec = WebSocketCodec(maxTextBytes: 300)
            // The machine's answers (hello, ready...) are not compared: only what the codec
            // itself sends (pongs, close frames) and its verdict.
            var m = WebSocketUploadMachine(configuration: .init(maxFileSize: 5000, maxNameLength: 64, idleTimeout: 10), now: 0)
            var out: [String] = []
            var payload: [UInt8] = []
            var size: UInt64 = 0, written: UInt64 = 0
            func flush() {
                if !payload.isEmpty { out.append("binary \(payload.count) \(payload.reduce(UInt64(14695981039346656037)) { ($0 ^ UInt64($1)) &* 1099511628211 })") }
                payload = []
            }
            func perform(_ action: WebSocketUploadMachine.Action) {
                switch action {
                case .none, .send, .endUpload, .hangUp, .close:
                    break
                case .createUpload(let name, let s):
                    checkName(Array(name.utf8), accepted: name)
                    precondition(s <= 5000, "an upload over the limit was created")
                    (size, written) = (s, 0)
                    perform(m.uploadCreated(id))
                case .lookUpUpload:
                    perform(m.lookedUp(name: nil, size: 0, held: 0))
                case .openUpload(_, let offset):
                    precondition(offset == 0)
                    perform(m.uploadOpened(offset: 0))
                case .write(let n, let last):
                    written += UInt64(n)
                    precondition(written <= size, "wrote \(written) of a \(size)-byte upload")
                    if last {
                        precondition(written == size, "stored \(written) of \(size) bytes")
                        perform(m.uploadStored(name: "stored"))
                    }
                case .sendAndCommit:
                    precondition(size == 0 && written == 0)
                    perform(m.uploadStored(name: "stored"))
                }
            }
            perform(m.start(nonce: []))
            var bytes = input
            var at = 0
            while at < bytes.count {
                let end = min(bytes.count, at + piece())
                let taken = bytes[at..<end].withUnsafeMutableBytes { chunk in
                    codec.feed(chunk) { event in
                        switch event {
                        case .text(let t):
                            flush()
                            out.append("text \(t.count)")
                            perform(m.textReceived(t, now: 0))
                        case .binary(let r):
                            precondition(r.lowerBound >= 0 && r.upperBound <= chunk.count, "a range outside the input")
                            payload += chunk[r]
                            perform(m.binaryReceived(r.count, now: 0))
                        case .closeReceived(let code):
                            flush()
                            out.append("close \(code)")
                            perform(m.connectionEnded())
                        }
                        return true
                    }
                }
                precondition(taken <= end - at)
                if taken == 0 { break }
                at += taken
            }
            flush()
            let sent = codec.takeOutput()
            out.append("sent \(sent.count) \(codec.closeCodeSent.map(String.init) ?? "-") \(codec.refusal?.code ?? 0)")
            return out
        }

        let whole = read { input.count }
        let pieces = read { 1 + choices.next(40) }
        precondition(whole == pieces, "pieces read \(pieces), whole \(whole)")
    }
}
