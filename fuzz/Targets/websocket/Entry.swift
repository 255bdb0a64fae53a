import FuzzDriver

/// The executable's entry point (see runFuzzer): fuzzes FuzzTarget.webSocket.
@_cdecl("fuzz_websocket_main")
public func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(.webSocket, argc, argv)
}
