import Glibc

/// Memory for a libuv handle or request, or for bytes libuv holds until a callback: from
/// `malloc` (16-byte aligned on this platform, as libuv's own allocations are), given back with
/// `freeForLibuv`. Swift's `allocate(byteCount:alignment: 16)` goes through `posix_memalign`
/// here, several times slower, and these are taken per connection, per write and per file
/// operation. Stops the process if memory is exhausted, as Swift's allocation does.
func allocateForLibuv(_ bytes: Int) -> UnsafeMutableRawPointer {
    guard let memory = malloc(max(bytes, 1)) else { fatalError("out of memory (\(bytes) bytes for libuv)") }
    return memory
}

/// Gives back memory from `allocateForLibuv`.
func freeForLibuv(_ memory: UnsafeMutableRawPointer) {
    free(memory)
}
