/// The owners of a `ClientSocketGroup`'s watched sockets, by descriptor, with the generation each
/// socket's events carry: an event read for a socket closed meanwhile never reaches a later
/// socket on the same descriptor. Descriptors are small and reused lowest first, so the array
/// stays about as long as the most sockets open at once.
///
/// The group's property of this type skips Swift's run-time exclusivity check
/// (`@exclusivity(unchecked)`): it is touched several times per connection, only on the loop's
/// thread, and every access ends before the group calls out to an owner.
struct ClientSocketOwners {
    private var entries: [(owner: ClientSocketOwner, generation: UInt32)?] = []
    private var lastGeneration: UInt32 = 0

    /// The generation of `descriptor`'s events, if it is watched.
    func generation(of descriptor: Int32) -> UInt32? {
        Int(descriptor) < entries.count ? entries[Int(descriptor)]?.generation : nil
    }

    /// A generation no watched socket has (until it wraps, after 2³² sockets).
    mutating func newGeneration() -> UInt32 {
        lastGeneration &+= 1
        return lastGeneration
    }

    mutating func record(_ owner: ClientSocketOwner, of descriptor: Int32, generation: UInt32) {
        let i = Int(descriptor)
        if i >= entries.count { entries += repeatElement(nil, count: i + 1 - entries.count) }
        entries[i] = (owner, generation)
    }

    mutating func forget(_ descriptor: Int32) {
        if Int(descriptor) < entries.count { entries[Int(descriptor)] = nil }
    }

    mutating func removeAll() { entries.removeAll() }

    /// Who is told of an event for `descriptor` carrying `generation`: nobody if the socket it was
    /// read for is gone.
    func owner(of descriptor: Int32, generation: UInt32) -> ClientSocketOwner? {
        guard Int(descriptor) < entries.count, let entry = entries[Int(descriptor)], entry.generation == generation else { return nil }
        return entry.owner
    }
}
