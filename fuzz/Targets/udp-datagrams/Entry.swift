import FuzzDriver

/// The executable's entry point (see runFuzzer): fuzzes FuzzTarget.udpDatagrams.
@_cdecl("fuzz_udp_datagrams_main")
public func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(.udpDatagrams, argc, argv)
}
