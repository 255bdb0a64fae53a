import FuzzDriver

/// The executable's entry point (see runFuzzer): fuzzes FuzzTarget.udpReceiver.
@_cdecl("fuzz_udp_receiver_main")
public func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(.udpReceiver, argc, argv)
}
