import Glibc
import DataStreamCore
import Histogram

/// The picture of a bench run (`datastream bench --report FILE.svg`), as wrk2 users plot theirs:
/// the latency percentile curve on a log axis of "1 in N" (so 99%, 99.9% and 99.99% are evenly
/// spaced) with the corrected curve beside it in an open-model run, and the throughput of each
/// second of the run. A pure function from a report to SVG text.
public enum BenchChart {
    /// The percentiles drawn, from the median to the maximum.
    static let percentiles: [Double] = [0, 25, 50, 75, 90, 95, 97.5, 99, 99.5, 99.75, 99.9, 99.95, 99.99, 99.995, 99.999, 100]

    /// Where percentile `p` sits on the x axis: log10 of 1 / (1 - p), the maximum at 10^6.
    static func position(_ p: Double) -> Double {
        p >= 100 ? 6 : min(6, -log10(1 - p / 100))
    }

    public static func svg(_ r: LoadGenerator.Report, title: String) -> String {
        let width = 720.0, panel = 260.0, left = 70.0, right = 20.0, top = 40.0, gap = 70.0
        let plotWidth = width - left - right
        var out = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(top + 2 * panel + gap + 40))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(left)" y="20" font-size="14" font-weight="bold">\(escape(title))</text>

        """
        // Latency percentiles.
        let curves: [(String, Histogram<UInt64>, String)] = [("from each upload's start", r.latency, "#1f77b4")]
            + (r.correctedLatency.map { [("from when each was due (corrected)", $0, "#d62728")] } ?? [])
        let highest = max(1, curves.map { $0.1.totalCount > 0 ? Double($0.1.max) / 1000 : 0 }.max() ?? 1)
        let y0 = top + panel
        out += axes(x: left, y: top, width: plotWidth, height: panel, yLabel: "latency, ms", yMax: highest)
        for (label, value) in [("0%", 0.0), ("90%", 90), ("99%", 99), ("99.9%", 99.9), ("99.99%", 99.99), ("99.999%", 99.999), ("max", 100)] {
            let x = left + plotWidth * position(value) / 6
            out += "<line x1=\"\(f(x))\" y1=\"\(f(y0))\" x2=\"\(f(x))\" y2=\"\(f(y0 + 5))\" stroke=\"black\"/><text x=\"\(f(x))\" y=\"\(f(y0 + 18))\" text-anchor=\"middle\">\(label)</text>\n"
        }
        out += "<text x=\"\(f(left + plotWidth / 2))\" y=\"\(f(y0 + 34))\" text-anchor=\"middle\">percentile</text>\n"
        for (i, (label, histogram, color)) in curves.enumerated() where histogram.totalCount > 0 {
            let points = percentiles.map { p -> String in
                let x = left + plotWidth * position(p) / 6
                let y = y0 - panel * (Double(histogram.valueAtPercentile(p)) / 1000) / highest
                return "\(f(x)),\(f(y))"
            }
            out += "<polyline class=\"latency\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(points.joined(separator: " "))\"/>\n"
            out += "<text x=\"\(f(left + 10))\" y=\"\(f(top + 16 + Double(i) * 16))\" fill=\"\(color)\">\(escape(label))</text>\n"
        }
        // Throughput per second.
        let top2 = top + panel + gap
        var rates: [(Double, Double)] = []
        var previous = LoadGenerator.Report.Sample(seconds: 0, bytes: 0, completed: 0)
        // An interval much shorter than the others (the end, just after a tick) says little:
        // it is drawn only when it is all there is.
        for (i, s) in r.timeline.enumerated() where s.seconds > previous.seconds {
            if s.seconds - previous.seconds < 0.2, i == r.timeline.count - 1, !rates.isEmpty { continue }
            rates.append((s.seconds, Double(s.bytes - min(s.bytes, previous.bytes)) / (s.seconds - previous.seconds) / 1e6))
            previous = s
        }
        let duration = max(r.seconds, rates.last?.0 ?? 0, 0.001)
        let fastest = max(0.001, rates.map(\.1).max() ?? 0)
        out += axes(x: left, y: top2, width: plotWidth, height: panel, yLabel: "MB/s", yMax: fastest)
        out += "<text x=\"\(f(left + plotWidth / 2))\" y=\"\(f(top2 + panel + 34))\" text-anchor=\"middle\">seconds (run of \(f(duration)) s)</text>\n"
        for i in 0...4 {
            let t = duration * Double(i) / 4, x = left + plotWidth * Double(i) / 4
            out += "<line x1=\"\(f(x))\" y1=\"\(f(top2 + panel))\" x2=\"\(f(x))\" y2=\"\(f(top2 + panel + 5))\" stroke=\"black\"/><text x=\"\(f(x))\" y=\"\(f(top2 + panel + 18))\" text-anchor=\"middle\">\(f(t))</text>\n"
        }
        if !rates.isEmpty {
            let points = ([(0.0, rates[0].1)] + rates).map { (t, v) in "\(f(left + plotWidth * t / duration)),\(f(top2 + panel - panel * v / fastest))" }
            out += "<polyline class=\"throughput\" fill=\"none\" stroke=\"#2ca02c\" stroke-width=\"2\" points=\"\(points.joined(separator: " "))\"/>\n"
        }
        out += "</svg>\n"
        return out
    }

    private static func axes(x: Double, y: Double, width: Double, height: Double, yLabel: String, yMax: Double) -> String {
        var s = "<line x1=\"\(f(x))\" y1=\"\(f(y + height))\" x2=\"\(f(x + width))\" y2=\"\(f(y + height))\" stroke=\"black\"/>\n"
        s += "<line x1=\"\(f(x))\" y1=\"\(f(y))\" x2=\"\(f(x))\" y2=\"\(f(y + height))\" stroke=\"black\"/>\n"
        for i in 0...4 {
            let v = yMax * Double(i) / 4, yy = y + height - height * Double(i) / 4
            s += "<text x=\"\(f(x - 6))\" y=\"\(f(yy + 4))\" text-anchor=\"end\">\(f(v))</text>\n"
        }
        s += "<text x=\"\(f(x - 50))\" y=\"\(f(y + height / 2))\" transform=\"rotate(-90 \(f(x - 50)) \(f(y + height / 2)))\" text-anchor=\"middle\">\(yLabel)</text>\n"
        return s
    }

    private static func f(_ v: Double) -> String {
        let r = (v * 100).rounded() / 100
        return r == r.rounded() ? String(Int(r)) : String(r)
    }

    private static func escape(_ s: String) -> String {
        s.replacingAll("&", "&amp;").replacingAll("<", "&lt;").replacingAll(">", "&gt;")
    }
}

private extension String {
    func replacingAll(_ target: Character, _ replacement: String) -> String {
        var out = ""
        for c in self { if c == target { out += replacement } else { out.append(c) } }
        return out
    }
}
