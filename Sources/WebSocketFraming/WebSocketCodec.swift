import CWSLay
import Glibc

/// The server side of one WebSocket connection's frames (RFC 6455), over Debian's wslay: it
/// takes the bytes a connection reads and gives back messages, and gives the bytes to write
/// for the messages and close frames queued. No I/O of its own: the driver feeds it and writes
/// what it returns.
///
/// wslay checks what a server must check: client frames are masked, control frames are short
/// and not fragmented, text and close reasons are UTF-8, close codes are valid. It answers pings
/// and close frames itself. A violation queues a close frame with its code (1002, 1007, 1009)
/// and stops reading; `closeCodeSent` tells which.
///
/// Binary payload is not gathered into messages: it comes as chunks, valid only during the
/// handler's call. Text messages are gathered, up to `maxTextBytes`.
public final class WebSocketCodec {
    public enum Event {
        /// A whole text message (UTF-8, checked).
        case text([UInt8])
        /// Some of a binary message's payload; valid only during the handler's call.
        case binary(UnsafeRawBufferPointer)
        /// The peer's close frame (its code, 1005 when it gave none); the answer is queued.
        case closeReceived(code: UInt16)
    }

    private var context: wslay_event_context_ptr?
    private let maxTextBytes: Int
    private var input = UnsafeRawBufferPointer(start: nil, count: 0)
    private var taken = 0
    private var paused = false
    private var handler: ((Event) -> Void)?
    private var output: [UInt8] = []
    private var frameIsControl = false
    private var frameFin = false
    private var messageIsText = false
    private var text: [UInt8] = []
    /// Set when a frame wslay could not parse, or a lack of memory, ended the codec.
    public private(set) var failed = false
    /// The close frame to send after such a failure (empty once taken).
    private var failureClose: [UInt8]?

    public init(maxTextBytes: Int) {
        self.maxTextBytes = maxTextBytes
        var callbacks = wslay_event_callbacks(
            recv_callback: { _, buf, len, _, user in WebSocketCodec.owner(user).receive(into: buf!, len) },
            send_callback: { _, data, len, _, user in WebSocketCodec.owner(user).collect(data!, len) },
            genmask_callback: nil,
            on_frame_recv_start_callback: { _, arg, user in WebSocketCodec.owner(user).frameStarted(arg!.pointee) },
            on_frame_recv_chunk_callback: { _, arg, user in WebSocketCodec.owner(user).chunk(arg!.pointee) },
            on_frame_recv_end_callback: { _, user in WebSocketCodec.owner(user).frameEnded() },
            on_msg_recv_callback: { _, arg, user in WebSocketCodec.owner(user).messageReceived(arg!.pointee) })
        if wslay_event_context_server_init(&context, &callbacks, Unmanaged.passUnretained(self).toOpaque()) != 0 {
            context = nil
            failed = true
            return
        }
        wslay_event_config_set_no_buffering(context, 1)
        // Without buffering, wslay checks each data frame's length against this: no limit
        // here, since a file's bytes may come in one frame; text is bounded by `maxTextBytes`.
        wslay_event_config_set_max_recv_msg_length(context, UInt64(Int64.max))
    }

    deinit {
        if let context { wslay_event_context_free(context) }
    }

    private static func owner(_ user: UnsafeMutableRawPointer?) -> WebSocketCodec {
        Unmanaged<WebSocketCodec>.fromOpaque(user!).takeUnretainedValue()
    }

    /// Parses from the start of `input`, calling `handler` for each event, until the input is
    /// used up or the handler called `pauseInput`. Returns how many bytes it took (wslay reads
    /// ahead up to one buffer of its own, so a few events may still come after a pause, from
    /// bytes already taken).
    public func feed(_ input: UnsafeRawBufferPointer, _ handler: (Event) -> Void) -> Int {
        guard let context, !failed else { return 0 }
        paused = false
        self.input = input
        taken = 0
        let result: Int32 = withoutActuallyEscaping(handler) { handler in
            self.handler = handler
            defer { self.handler = nil }
            return wslay_event_recv(context)
        }
        self.input = UnsafeRawBufferPointer(start: nil, count: 0)
        if result != 0 {
            // A frame wslay could not parse (an oversized or fragmented control frame): it
            // queued a close frame without a code; this codec sends 1002 in its place.
            failed = true
            failureClose = [0x88, 0x02, 0x03, 0xea]
        }
        return taken
    }

    /// How many bytes of the current `feed`'s input the codec has taken so far (its events come
    /// from bytes taken, so the input before this point may be reused by the handler).
    public var takenInThisFeed: Int { taken }

    /// Called from the handler: take no more input in this `feed`.
    public func pauseInput() { paused = true }

    /// Queues a text message.
    public func sendText(_ message: String) {
        guard let context else { return }
        var bytes = Array(message.utf8)
        bytes.withUnsafeMutableBufferPointer { b in
            var msg = wslay_event_msg(opcode: UInt8(WSLAY_TEXT_FRAME.rawValue), msg: b.baseAddress, msg_length: b.count)
            _ = wslay_event_queue_msg(context, &msg)
        }
    }

    /// Queues a close frame with `code` and a reason (cut to fit a control frame); the codec
    /// then takes no more messages to send.
    public func close(code: UInt16, reason: String) {
        guard let context else { return }
        var bytes = Array(reason.utf8.prefix(123))
        while !bytes.isEmpty, String(validating: bytes, as: UTF8.self) == nil { bytes.removeLast() }
        _ = bytes.withUnsafeBufferPointer { b in wslay_event_queue_close(context, code, b.baseAddress, b.count) }
    }

    /// The bytes to write for everything queued so far.
    public func takeOutput() -> [UInt8] {
        if let close = failureClose {
            failureClose = []
            return close
        }
        guard let context else { return [] }
        if wslay_event_send(context) != 0 { failed = true }
        defer { output = [] }
        return output
    }

    /// Both sides have closed (or the codec failed): nothing more to read or write.
    public var isFinished: Bool {
        guard let context, !failed else { return true }
        return wslay_event_want_read(context) == 0 && wslay_event_want_write(context) == 0
    }

    /// Whether the codec still reads (false after a close frame either way, or a violation).
    public var isReading: Bool {
        guard let context, !failed else { return false }
        return wslay_event_get_read_enabled(context) != 0 && wslay_event_get_close_received(context) == 0
    }

    /// The code of the close frame this side sent, if it sent one.
    public var closeCodeSent: UInt16? {
        if failureClose != nil { return 1002 }
        guard let context, wslay_event_get_close_sent(context) != 0 else { return nil }
        return wslay_event_get_status_code_sent(context)
    }

    // MARK: - wslay's callbacks

    private func receive(into buffer: UnsafeMutablePointer<UInt8>, _ length: Int) -> Int {
        let available = input.count - taken
        guard !paused, available > 0 else {
            wslay_event_set_error(context, WSLAY_ERR_WOULDBLOCK.rawValue)
            return -1
        }
        let n = min(length, available)
        memcpy(buffer, input.baseAddress! + taken, n)
        taken += n
        return n
    }

    private func collect(_ data: UnsafePointer<UInt8>, _ length: Int) -> Int {
        output.append(contentsOf: UnsafeBufferPointer(start: data, count: length))
        return length
    }

    private func frameStarted(_ arg: wslay_event_on_frame_recv_start_arg) {
        frameIsControl = arg.opcode >= 0x8
        frameFin = arg.fin != 0
        guard !frameIsControl else { return }
        if arg.opcode == UInt8(WSLAY_TEXT_FRAME.rawValue) {
            messageIsText = true
            text.removeAll(keepingCapacity: true)
        } else if arg.opcode == UInt8(WSLAY_BINARY_FRAME.rawValue) {
            messageIsText = false
        }
    }

    private func chunk(_ arg: wslay_event_on_frame_recv_chunk_arg) {
        guard !frameIsControl, arg.data_length > 0 else { return }
        if messageIsText {
            guard text.count + arg.data_length <= maxTextBytes else {
                text = []
                close(code: 1009, reason: "a text message longer than \(maxTextBytes) bytes")
                wslay_event_shutdown_read(context)
                return
            }
            text.append(contentsOf: UnsafeBufferPointer(start: arg.data, count: arg.data_length))
        } else {
            handler?(.binary(UnsafeRawBufferPointer(start: arg.data, count: arg.data_length)))
        }
    }

    private func frameEnded() {
        guard !frameIsControl, frameFin, messageIsText, wslay_event_get_read_enabled(context) != 0 else { return }
        let message = text
        text.removeAll(keepingCapacity: true)
        handler?(.text(message))
    }

    private func messageReceived(_ arg: wslay_event_on_msg_recv_arg) {
        guard arg.opcode == UInt8(WSLAY_CONNECTION_CLOSE.rawValue) else { return }
        handler?(.closeReceived(code: arg.status_code == 0 ? 1005 : arg.status_code))
    }
}
