import CLibUV
import Glibc

/// A small file of fixed-size slots that every process opening it maps (`MAP_SHARED`), so
/// processes on one machine see each other's numbers at once: each process claims one slot
/// and writes only its own words, with atomic stores; anyone reads any slot. A slot is held
/// with an open file description's lock on its byte range (`F_OFD_SETLK`), which the kernel
/// drops however its holder ends (`kill -9` included): a slot whose lock is free belongs to
/// nobody, and what it holds is a dead process's. libuv has neither shared mappings nor file
/// locks; these are `mmap(2)` and `fcntl(2)`.
///
/// A mapping is only coherent between processes of one machine: on a network file system each
/// machine sees its own processes' numbers.
public final class SharedSlots: @unchecked Sendable {
    public let path: String
    public let slotCount: Int
    public let wordsPerSlot: Int
    /// Which slot a process takes.
    public enum Claim: Sendable {
        /// The first free one, its words zeroed.
        case anyFree
        /// This one (it must be free), its words kept: a process taking over from one that
        /// ended goes on from what it left.
        case slot(Int)
        /// None: this process only reads.
        case none
    }

    /// This process's slot (nil: it only reads).
    public let ownSlot: Int?
    private let fd: Int32
    private let words: UnsafeMutablePointer<UInt64>
    private let byteCount: Int

    /// Opens (or creates) the file at `path`, maps it, and claims a slot as `claim` says.
    /// Blocking: at start-up, before a loop runs. Fails if the slot asked for (or, for
    /// `anyFree`, every slot) is held.
    public init(path: String, slots: Int, wordsPerSlot: Int, claim: Claim = .anyFree) throws(UVOperationError) {
        precondition(slots > 0 && wordsPerSlot > 0)
        self.path = path
        self.slotCount = slots
        self.wordsPerSlot = wordsPerSlot
        byteCount = slots * wordsPerSlot * 8
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        if fd < 0 { throw UVOperationError("open", target: path, code: -errno) }
        var st = stat()
        // Grown, never shrunk: a process that maps it with fewer slots reads a prefix.
        if fstat(fd, &st) != 0 || (Int(st.st_size) < byteCount && ftruncate(fd, off_t(byteCount)) != 0) {
            let code = -errno
            close(fd)
            throw UVOperationError("ftruncate", target: path, code: code)
        }
        guard let mapped = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), mapped != MAP_FAILED else {
            let code = -errno
            close(fd)
            throw UVOperationError("mmap", target: path, code: code)
        }
        self.fd = fd
        words = mapped.assumingMemoryBound(to: UInt64.self)
        let candidates: [Int]
        switch claim {
        case .anyFree: candidates = Array(0..<slots)
        case .slot(let i): candidates = (0..<slots).contains(i) ? [i] : []
        case .none: candidates = []
        }
        let claimed = candidates.first { SharedSlots.lock(fd, slot: $0, wordsPerSlot: wordsPerSlot, command: LinuxConstants.fOFDSetLock) }
        if claimed == nil, case .none = claim {} else if claimed == nil {
            munmap(mapped, byteCount)
            close(fd)
            throw UVOperationError("claim a slot", target: path, code: UVError.busy.code)
        }
        ownSlot = claimed
        if case .anyFree = claim { for word in 0..<wordsPerSlot { store(word, 0) } }
    }

    deinit {
        munmap(words, byteCount)
        close(fd)  // lets the slot go
    }

    private func address(_ slot: Int, _ word: Int) -> UnsafeMutablePointer<UInt64> {
        precondition(slot >= 0 && slot < slotCount && word >= 0 && word < wordsPerSlot)
        return words + slot * wordsPerSlot + word
    }

    /// Sets one of this process's words.
    public func store(_ word: Int, _ value: UInt64) {
        guard let ownSlot else { preconditionFailure("a reader has no slot to write") }
        address(ownSlot, word).withMemoryRebound(to: CUnsignedLongLong.self, capacity: 1) { datastream_atomic_store($0, CUnsignedLongLong(value)) }
    }

    /// Adds `delta` (wrapping: a negative step as its two's complement) to one of this
    /// process's words and returns the new value.
    @discardableResult
    public func add(_ word: Int, _ delta: UInt64) -> UInt64 {
        guard let ownSlot else { preconditionFailure("a reader has no slot to write") }
        return address(ownSlot, word).withMemoryRebound(to: CUnsignedLongLong.self, capacity: 1) { UInt64(datastream_atomic_add($0, CUnsignedLongLong(delta))) }
    }

    /// A word of any slot.
    public func load(slot: Int, word: Int) -> UInt64 {
        address(slot, word).withMemoryRebound(to: CUnsignedLongLong.self, capacity: 1) { UInt64(datastream_atomic_load($0)) }
    }

    /// The slots some process holds now, this one's included (`F_OFD_GETLK` on each; blocking,
    /// but brief: one call per slot).
    public func heldSlots() -> [Int] {
        (0..<slotCount).filter { $0 == ownSlot || SharedSlots.isHeld(fd, slot: $0, wordsPerSlot: wordsPerSlot) }
    }

    /// The sum of `word` over `slots`.
    public func sum(_ word: Int, over slots: [Int]) -> UInt64 {
        slots.reduce(0) { $0 &+ load(slot: $1, word: word) }
    }

    private static func range(_ slot: Int, wordsPerSlot: Int, type: Int32) -> flock {
        var lock = flock()
        lock.l_type = Int16(type)
        lock.l_whence = Int16(SEEK_SET)
        lock.l_start = off_t(slot * wordsPerSlot * 8)
        lock.l_len = off_t(wordsPerSlot * 8)
        lock.l_pid = 0
        return lock
    }

    private static func lock(_ fd: Int32, slot: Int, wordsPerSlot: Int, command: Int32) -> Bool {
        var lock = range(slot, wordsPerSlot: wordsPerSlot, type: F_WRLCK)
        return fcntl(fd, command, &lock) == 0
    }

    private static func isHeld(_ fd: Int32, slot: Int, wordsPerSlot: Int) -> Bool {
        var lock = range(slot, wordsPerSlot: wordsPerSlot, type: F_WRLCK)
        guard fcntl(fd, LinuxConstants.fOFDGetLock, &lock) == 0 else { return true }  // unknown: counted
        return lock.l_type != Int16(F_UNLCK)
    }
}
