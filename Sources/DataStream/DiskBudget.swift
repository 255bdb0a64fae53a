import DataStreamCore
import Glibc
import UV

/// Whether an upload fits on the target file system, decided when it starts rather than
/// discovered when the disk fills. Owned by the server; used on the loop thread only.
///
/// The free space is read with `statfs` on the threadpool (`refresh`, from the server's sweep
/// timer, at most a second old) and once at start. Every upload in progress holds a
/// reservation of its announced size until it ends; an upload fits when its size plus all
/// reservations plus `minimumFree` are within the last free space read. Bytes an upload has
/// already written count twice (in its reservation and as space used) until it ends:
/// conservative, never optimistic.
///
/// "All reservations" are every process's that shares the target directory on this machine:
/// each publishes its own total in `.datastream/budget` (`SharedSlots`), and a reservation is
/// published before the others are added up, so two processes reserving at once may both
/// refuse but never both overcommit. Which processes are alive is read at each `refresh`.
final class DiskBudget {
    /// Bytes to leave free (`--min-free-space`).
    let minimumFree: UInt64
    private let directory: String
    private var available: UInt64
    /// This process's reservations.
    private(set) var reserved: UInt64 = 0
    private var refreshing = false
    /// Every process's reservations on this machine (nil where the file cannot be kept: then
    /// this process budgets alone).
    private let shared: SharedSlots?
    /// The other processes' slots, as last read.
    private var others: [Int] = []

    /// The word of a process's slot that holds its reservations.
    private static let reservedWord = 0

    init(directory: String, minimumFree: UInt64, sharedFile: String? = nil) {
        self.directory = directory
        self.minimumFree = minimumFree
        available = (try? BlockingFileSystem.availableBytes(at: directory)) ?? .max  // at start-up, before the loop runs
        shared = sharedFile.flatMap { try? SharedSlots(path: $0, slots: 256, wordsPerSlot: 1) }
        if let shared { others = shared.heldSlots().filter { $0 != shared.ownSlot } }
    }

    /// Whether reservations are shared with other processes.
    var isShared: Bool { shared != nil }

    /// What the other processes on this machine hold now.
    var reservedElsewhere: UInt64 { shared?.sum(DiskBudget.reservedWord, over: others) ?? 0 }

    /// Reserves `bytes` for an upload, or says why it does not fit.
    func reserve(_ bytes: UInt64) -> ProtocolError? {
        let (mine, o1) = reserved.addingReportingOverflow(bytes)
        shared?.store(DiskBudget.reservedWord, o1 ? .max : mine)  // published first, then the others read
        let elsewhere = reservedElsewhere
        let (held, o2) = mine.addingReportingOverflow(elsewhere)
        let (needAll, o3) = held.addingReportingOverflow(minimumFree)
        if o1 || o2 || o3 || needAll > available {
            shared?.store(DiskBudget.reservedWord, reserved)
            let holding = reserved &+ elsewhere
            let left = available > holding &+ minimumFree ? available - holding - minimumFree : 0
            return .diskFull(reason: "\(bytes) bytes announced, \(left) available (free space \(available) less \(minimumFree) kept free and \(holding) held by uploads in progress)")
        }
        reserved = mine
        return nil
    }

    /// Gives back a reservation (the upload ended, stored or not).
    func release(_ bytes: UInt64) {
        reserved -= min(bytes, reserved)
        shared?.store(DiskBudget.reservedWord, reserved)
    }

    /// Reads the free space again, and which other processes hold reservations, on the
    /// threadpool (one read at a time).
    func refresh(_ fs: FileSystem) {
        guard !refreshing else { return }
        refreshing = true
        final class Reading: @unchecked Sendable { var bytes: UInt64?; var held: [Int]? }
        let reading = Reading(), directory = directory, shared = shared
        do {
            try fs.loop.queueWork({
                reading.bytes = try? BlockingFileSystem.availableBytes(at: directory)
                reading.held = shared.map { s in s.heldSlots().filter { $0 != s.ownSlot } }
            }, after: { [self] in
                refreshing = false
                if let bytes = reading.bytes { available = bytes }
                if let held = reading.held { others = held }
            })
        } catch {
            refreshing = false
        }
    }
}
