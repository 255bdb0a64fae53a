import CLibUV
import Glibc

/// A reusable batch of datagrams for `UDPSocket.send(_:)`, written into the batch's own memory.
///
/// With `segmentation` (Linux UDP GSO, `UDP_SEGMENT`), datagrams of one size are packed back to
/// back into messages of up to 64 KiB and the kernel cuts them apart: one trip through the
/// network stack per message instead of per datagram. Only the last datagram of a message may be
/// shorter. Without it, each message is one datagram. Owned by one sender; not thread-safe.
public final class UDPBatch {
    /// Messages per `sendmmsg` call.
    public let messageCapacity: Int
    /// Bytes per message (a UDP datagram's limit, less headers).
    public static let messageBytes = 65_000
    /// Most datagrams the kernel accepts in one segmented message.
    public static let maxSegments = 64
    public private(set) var segmentation: Bool
    private let messages: UnsafeMutablePointer<datastream_mmsghdr>
    private let vectors: UnsafeMutablePointer<iovec>
    private let buffers: UnsafeMutableRawPointer
    private let controls: UnsafeMutableRawPointer
    private var lengths: [Int]
    private var segmentSizes: [Int]
    private var segmentCounts: [Int]
    /// Messages with at least one datagram.
    public private(set) var count = 0
    private static let controlBytes = 24  // CMSG_SPACE(sizeof(uint16_t)) on 64-bit Linux

    public init(messageCapacity: Int = 16, segmentation: Bool = true) {
        self.messageCapacity = messageCapacity
        self.segmentation = segmentation
        messages = .allocate(capacity: messageCapacity)
        messages.initialize(repeating: datastream_mmsghdr(), count: messageCapacity)
        vectors = .allocate(capacity: messageCapacity)
        vectors.initialize(repeating: iovec(), count: messageCapacity)
        buffers = .allocate(byteCount: messageCapacity * Self.messageBytes, alignment: 64)
        controls = .allocate(byteCount: messageCapacity * Self.controlBytes, alignment: 8)
        lengths = [Int](repeating: 0, count: messageCapacity)
        segmentSizes = [Int](repeating: 0, count: messageCapacity)
        segmentCounts = [Int](repeating: 0, count: messageCapacity)
    }

    deinit {
        messages.deallocate()
        vectors.deallocate()
        buffers.deallocate()
        controls.deallocate()
    }

    /// No room for another datagram of `length` bytes.
    public func isFull(for length: Int) -> Bool {
        guard count == messageCapacity else { return false }
        return !fitsInLast(length)
    }

    private func fitsInLast(_ length: Int) -> Bool {
        guard segmentation, count > 0 else { return false }
        let m = count - 1
        // Same size as the message's datagrams (or shorter, as its last), room, and the previous one full size.
        return length <= segmentSizes[m] && lengths[m] % segmentSizes[m] == 0
            && lengths[m] + length <= Self.messageBytes && segmentCounts[m] < Self.maxSegments
    }

    /// Appends a datagram of `length` bytes, written in place by `write`. The caller checked `isFull(for:)`.
    public func append(length: Int, write: (UnsafeMutableRawPointer) -> Void) {
        precondition(length <= Self.messageBytes)
        if !fitsInLast(length) {
            precondition(count < messageCapacity, "UDPBatch is full")
            lengths[count] = 0
            segmentSizes[count] = length
            segmentCounts[count] = 0
            count += 1
        }
        let m = count - 1
        write(buffers + m * Self.messageBytes + lengths[m])
        lengths[m] += length
        segmentCounts[m] += 1
    }

    fileprivate func withMessages<R>(_ body: (UnsafeMutablePointer<datastream_mmsghdr>, Int) -> R) -> R {
        for i in 0..<count {
            vectors[i] = iovec(iov_base: buffers + i * Self.messageBytes, iov_len: lengths[i])
            messages[i] = datastream_mmsghdr()
            messages[i].msg_hdr.msg_iov = vectors + i
            messages[i].msg_hdr.msg_iovlen = 1
            if segmentCounts[i] > 1 {
                let c = controls + i * Self.controlBytes
                c.initializeMemory(as: UInt8.self, repeating: 0, count: Self.controlBytes)
                c.storeBytes(of: 18, toByteOffset: 0, as: Int.self)                  // cmsg_len = CMSG_LEN(2)
                c.storeBytes(of: LinuxConstants.solUDP, toByteOffset: 8, as: Int32.self)  // cmsg_level
                c.storeBytes(of: LinuxConstants.udpSegment, toByteOffset: 12, as: Int32.self)  // cmsg_type
                c.storeBytes(of: UInt16(segmentSizes[i]), toByteOffset: 16, as: UInt16.self)
                messages[i].msg_hdr.msg_control = c
                messages[i].msg_hdr.msg_controllen = Self.controlBytes
            }
        }
        return body(messages, count)
    }

    fileprivate func removeFirst(_ n: Int) {
        guard n > 0 else { return }
        let rest = count - n
        for i in 0..<rest {
            (buffers + i * Self.messageBytes).copyMemory(from: buffers + (n + i) * Self.messageBytes, byteCount: lengths[n + i])
            lengths[i] = lengths[n + i]
            segmentSizes[i] = segmentSizes[n + i]
            segmentCounts[i] = segmentCounts[n + i]
        }
        count = rest
    }

    /// The kernel refused segmentation: from now on one datagram per message. Queued messages
    /// with several datagrams are dropped (the protocol above recovers them as losses).
    fileprivate func disableSegmentation() {
        segmentation = false
        count = 0
    }

    /// Drops every queued datagram.
    public func removeAll() { count = 0 }
}

extension UDPSocket {
    /// Sends the messages queued in `batch` with one `sendmmsg` call on a connected socket
    /// (libuv 1.44 has no batched send); removes those the kernel took and returns their count.
    /// `EAGAIN` returns 0 (the rest stay queued); other errors throw.
    public func send(_ batch: UDPBatch) throws(UVOperationError) -> Int {
        guard batch.count > 0 else { return 0 }
        let fd = try fileDescriptor()
        let sent = batch.withMessages { datastream_sendmmsg(fd, $0, UInt32($1), 0) }
        if sent < 0 {
            let e = errno
            if e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS { return 0 }
            if batch.segmentation, e == EIO || e == EINVAL || e == ENOPROTOOPT || e == EOPNOTSUPP {
                // No UDP GSO here (kernel, device or a datagram above the path MTU): go unsegmented.
                batch.disableSegmentation()
                return 0
            }
            throw UVOperationError("sendmmsg", code: -e)
        }
        batch.removeFirst(Int(sent))
        return Int(sent)
    }
}
