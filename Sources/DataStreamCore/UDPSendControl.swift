/// Which chunk a native-UDP sender sends next: retransmissions the receiver asked for first, then
/// new chunks up to the receiver's window. A pure value owned by the sender's driver.
public struct UDPSendScheduler: Sendable {
    public let chunkCount: UInt32
    /// The next chunk never sent.
    public private(set) var nextNew: UInt32 = 0
    /// The receiver holds every chunk below this.
    public private(set) var cumulative: UInt32 = 0
    /// The receiver takes chunks below this.
    public private(set) var windowLimit: UInt32
    private var queue: [(UInt32, UInt32)] = []
    private var head = 0
    /// Chunks sent again because the receiver reported them missing.
    public private(set) var retransmitted: UInt64 = 0

    public init(chunkCount: UInt32, windowChunks: UInt32) {
        self.chunkCount = chunkCount
        self.windowLimit = min(chunkCount, windowChunks)
    }

    /// Every chunk has been sent at least once.
    public var allSentOnce: Bool { nextNew >= chunkCount }
    /// Retransmissions are waiting.
    public var hasRetransmissions: Bool { head < queue.count }

    /// A STATUS arrived: move the cumulative point and window, queue the reported ranges.
    public mutating func status(_ s: UDPWire.Status) {
        cumulative = max(cumulative, min(s.cumulative, chunkCount))
        windowLimit = max(windowLimit, min(s.windowLimit, chunkCount))
        for (first, count) in s.nacks where count > 0 && first < nextNew {
            let end = min(UInt64(first) + UInt64(count), UInt64(nextNew))
            queue.append((first, UInt32(end - UInt64(first))))
        }
        if head > 1024, head * 2 > queue.count {
            queue.removeFirst(head)
            head = 0
        }
    }

    /// The next chunk to send and whether it is a retransmission, or nil when nothing may be sent
    /// now. New chunks come only from below `readyBelow` (what the sender has read of its file).
    public mutating func next(readyBelow: UInt32 = .max) -> (chunk: UInt32, retransmission: Bool)? {
        while head < queue.count {
            let (first, count) = queue[head]
            if count == 0 || first < cumulative && first + count <= cumulative {
                head += 1
                continue
            }
            let chunk = max(first, cumulative)
            let remaining = first + count - chunk - 1
            if remaining == 0 { head += 1 } else { queue[head] = (chunk + 1, remaining) }
            retransmitted += 1
            return (chunk, true)
        }
        guard nextNew < chunkCount, nextNew < windowLimit, nextNew < readyBelow else { return nil }
        defer { nextNew += 1 }
        return (nextNew, false)
    }
}

/// The sender's pacing rate, found without a hand-set rate, in the manner of BBR: the receiver
/// reports the bytes it received against its own clock; the delivery rate over each interval is a
/// bandwidth sample; the estimate is the windowed maximum of the samples. The sender paces at a
/// gain times the estimate: 2.885 while starting up (until three samples fail to grow it by
/// 25%), then a short drain, then a cycle of 1.25 (probe up), 0.75 (drain the queue) and six
/// phases of 1. Loss does not lower the rate, so random loss of a few percent cannot collapse it;
/// `maxRate` caps it.
///
/// A pure value owned by the sender's driver. Rates are bytes per second, times microseconds.
public struct RateController: Sendable {
    public enum Mode: Equatable, Sendable { case startup, drain, probe }

    public struct Configuration: Sendable {
        /// The rate before any sample (12.5 MB/s = 100 Mbit/s).
        public var initialRate: Double = 12_500_000
        public var minimumRate: Double = 250_000
        public var maxRate: Double?
        /// Shortest interval (receiver time) one bandwidth sample covers.
        public var sampleInterval: UInt64 = 4_000
        /// Shortest probe phase.
        public var phaseDuration: UInt64 = 8_000
        public init() {}
    }

    public let configuration: Configuration
    public private(set) var mode: Mode = .startup
    public private(set) var bandwidth: Double
    public private(set) var minimumRoundTrip: UInt64 = .max
    private var samples: [(time: UInt64, rate: Double)] = []
    private var last: (receiverTime: UInt64, bytes: UInt64)?
    private var fullBandwidth: Double = 0
    private var fullBandwidthCount = 0
    private var phase = 0
    private var phaseStart: UInt64 = 0
    private static let probeGains: [Double] = [1.25, 0.75, 1, 1, 1, 1, 1, 1]

    public init(_ configuration: Configuration = Configuration()) {
        self.configuration = configuration
        bandwidth = configuration.initialRate
    }

    /// The current gain on the bandwidth estimate.
    public var gain: Double {
        switch mode {
        case .startup: return 2.885
        case .drain: return 1 / 2.885
        case .probe: return Self.probeGains[phase]
        }
    }

    /// The rate to pace at now.
    public var pacingRate: Double {
        var r = max(configuration.minimumRate, gain * bandwidth)
        if let cap = configuration.maxRate { r = min(r, cap) }
        return r
    }

    /// A round-trip sample (sender time from a packet's send to the STATUS that echoes it).
    public mutating func roundTripSample(_ microseconds: UInt64) {
        minimumRoundTrip = min(minimumRoundTrip, max(microseconds, 1))
    }

    private var bandwidthWindow: UInt64 {
        let rtt = minimumRoundTrip == .max ? 10_000 : minimumRoundTrip
        return max(10 * max(rtt, configuration.phaseDuration), 100_000)
    }

    /// A STATUS reported `receivedBytes` at `receiverTime`; `now` is the sender's clock.
    public mutating func delivered(receivedBytes: UInt64, receiverTime: UInt64, now: UInt64) {
        guard let previous = last else {
            last = (receiverTime, receivedBytes)
            phaseStart = now
            return
        }
        guard receiverTime > previous.receiverTime, receiverTime - previous.receiverTime >= configuration.sampleInterval,
              receivedBytes >= previous.bytes
        else { return }
        let rate = Double(receivedBytes - previous.bytes) * 1_000_000 / Double(receiverTime - previous.receiverTime)
        last = (receiverTime, receivedBytes)
        samples.append((now, rate))
        let horizon = bandwidthWindow
        var drop = 0
        while drop < samples.count - 1, now - samples[drop].time > horizon { drop += 1 }
        if drop > 0 { samples.removeFirst(drop) }
        bandwidth = max(samples.map(\.rate).max() ?? rate, configuration.minimumRate)
        if let cap = configuration.maxRate { bandwidth = min(bandwidth, cap) }

        switch mode {
        case .startup:
            if bandwidth >= fullBandwidth * 1.25 {
                fullBandwidth = bandwidth
                fullBandwidthCount = 0
            } else {
                fullBandwidthCount += 1
                if fullBandwidthCount >= 3 {
                    mode = .drain
                    phaseStart = now
                }
            }
        case .drain:
            if now - phaseStart >= phaseLength {
                mode = .probe
                phase = 2  // start in a neutral phase
                phaseStart = now
            }
        case .probe:
            if now - phaseStart >= phaseLength {
                phase = (phase + 1) % Self.probeGains.count
                phaseStart = now
            }
        }
    }

    private var phaseLength: UInt64 {
        max(minimumRoundTrip == .max ? configuration.phaseDuration : minimumRoundTrip, configuration.phaseDuration)
    }
}
