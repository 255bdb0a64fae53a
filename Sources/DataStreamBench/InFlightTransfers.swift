/// The uploads a generator has in flight, each at its `activeSlot`: adding or removing one takes
/// constant time and no hashing (removing one moves the last into its place).
///
/// The generator's property of this type skips Swift's run-time exclusivity check
/// (`@exclusivity(unchecked)`): it is touched on every upload, only on the generator's loop
/// thread, and every access ends before the generator calls out to an upload.
struct InFlightTransfers {
    /// Every upload in flight, in no particular order.
    private(set) var all: [any BenchTransfer] = []

    var count: Int { all.count }
    var isEmpty: Bool { all.isEmpty }

    mutating func add(_ upload: any BenchTransfer) {
        upload.activeSlot = all.count
        all.append(upload)
    }

    /// Forgets `upload`, if it is in flight.
    mutating func remove(_ upload: any BenchTransfer) {
        let slot = upload.activeSlot
        guard slot >= 0, slot < all.count, all[slot] === upload else { return }
        let last = all.removeLast()
        if slot < all.count {
            all[slot] = last
            last.activeSlot = slot
        }
        upload.activeSlot = -1
    }
}
