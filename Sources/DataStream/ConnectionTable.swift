/// The server's open connections, in no order. Each connection knows its place
/// (`ServedConnection.tableIndex`), so it joins at the end and leaves by taking the last one's place:
/// no hashing, no search. Owned by `Server`; loop thread only.
///
/// Its array skips Swift's run-time exclusivity check (`@exclusivity(unchecked)`; every accepted
/// and every closed connection touched it three or four times). That is sound because no change
/// here can run code of ours while the array is being changed: adding stores a reference the
/// caller holds, and removing swaps the leaving connection to the end and takes it out *as a
/// value* handed back to the caller, so its release (and any `deinit`) happens after the access.
/// Iterating goes over a copy, so connections may close (and leave) during it.
final class ConnectionTable: Sequence {
    @exclusivity(unchecked) private var entries: [ServedConnection] = []

    var count: Int { entries.count }
    var isEmpty: Bool { entries.isEmpty }

    func insert(_ connection: ServedConnection) {
        connection.tableIndex = entries.count
        entries.append(connection)
    }

    /// Takes `connection` out (the last one moves into its place). Returns it, or nil if it
    /// was not in the table.
    @discardableResult
    func remove(_ connection: ServedConnection) -> ServedConnection? {
        let i = connection.tableIndex
        guard i >= 0, i < entries.count, entries[i] === connection else { return nil }
        let last = entries.count - 1
        if i != last {
            entries.swapAt(i, last)
            entries[i].tableIndex = i
        }
        connection.tableIndex = -1
        return entries.removeLast()
    }

    /// Puts `successor` in `connection`'s place (a connection handed over to another driver).
    func replace(_ connection: ServedConnection, with successor: ServedConnection) {
        let i = connection.tableIndex
        guard i >= 0, i < entries.count, entries[i] === connection else { return }
        successor.tableIndex = i
        connection.tableIndex = -1
        let old = entries[i]
        entries[i] = successor
        _ = old  // released after the access
    }

    func makeIterator() -> IndexingIterator<[ServedConnection]> { entries.makeIterator() }
}
