// CoreMLBench: times compiled Core ML models listed in Documents/job.json and writes
// Documents/results.json (the contract with device_agents/transports/ios.py).
//
// job.json:     {"models": ["models/op.mlmodelc", ...], "compute_units": ["cpuOnly", ...],
//                "warmup": 10, "iters": 50, "rounds": 1, "samples": true}
// results.json: {"app_version", "device", "os", "thermal_before", "thermal_after",
//                "results": [{"model", "compute_units", "load_ms", "median_us", "p10_us", "p90_us",
//                             "thermal", "samples_us": [...], "error"?}]}
import CoreML
import Foundation

struct Job: Decodable {
    let models: [String]
    let compute_units: [String]
    let warmup: Int
    let iters: Int
    let rounds: Int?
    let samples: Bool?
}

struct Row: Encodable {
    let model: String
    let compute_units: String
    var load_ms: Double = 0
    var median_us: Double? = nil
    var p10_us: Double? = nil
    var p90_us: Double? = nil
    var thermal: String = ""
    var samples_us: [Double]? = nil
    var error: String? = nil
}

struct Results: Encodable {
    let app_version: String
    let device: String
    let os: String
    let thermal_before: String
    var thermal_after: String
    var results: [Row]
}

enum BenchError: Error, CustomStringConvertible {
    case badJob(String)
    var description: String {
        switch self { case .badJob(let s): return "bad job: \(s)" }
    }
}

func thermalName(_ s: ProcessInfo.ThermalState = ProcessInfo.processInfo.thermalState) -> String {
    switch s {
    case .nominal: return "nominal"
    case .fair: return "fair"
    case .serious: return "serious"
    case .critical: return "critical"
    @unknown default: return "unknown"
    }
}

func computeUnits(_ name: String) throws -> MLComputeUnits {
    switch name {
    case "cpuOnly": return .cpuOnly
    case "cpuAndGPU": return .cpuAndGPU
    case "cpuAndNeuralEngine": return .cpuAndNeuralEngine
    case "all": return .all
    default: throw BenchError.badJob("unknown compute unit \(name)")
    }
}

func machineId() -> String {
    var info = utsname()
    uname(&info)
    return withUnsafeBytes(of: &info.machine) { raw in
        String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
    }
}

/// Random inputs shaped like the model's (fp16 or fp32 multi-arrays), built once outside the timer.
func makeInputs(_ model: MLModel) throws -> MLFeatureProvider {
    var dict: [String: MLFeatureValue] = [:]
    for (name, desc) in model.modelDescription.inputDescriptionsByName {
        guard let c = desc.multiArrayConstraint else { throw BenchError.badJob("input \(name) is not a tensor") }
        let arr = try MLMultiArray(shape: c.shape, dataType: c.dataType)
        for i in 0..<arr.count { arr[i] = NSNumber(value: Float.random(in: -1...1)) }
        dict[name] = MLFeatureValue(multiArray: arr)
    }
    return try MLDictionaryFeatureProvider(dictionary: dict)
}

func percentile(_ sorted: [Double], _ q: Double) -> Double {
    if sorted.count == 1 { return sorted[0] }
    let pos = q * Double(sorted.count - 1)
    let lo = Int(pos.rounded(.down)), hi = min(lo + 1, sorted.count - 1)
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - Double(lo))
}

/// Waits while the phone is hot, so one op's heat does not slow the next.
func coolDown() {
    while ProcessInfo.processInfo.thermalState.rawValue >= ProcessInfo.ThermalState.serious.rawValue {
        Thread.sleep(forTimeInterval: 5)
    }
}

func timeOne(url: URL, modelName: String, unitName: String, job: Job) -> Row {
    var row = Row(model: modelName, compute_units: unitName)
    do {
        let config = MLModelConfiguration()
        config.computeUnits = try computeUnits(unitName)
        let t0 = DispatchTime.now().uptimeNanoseconds
        let model = try MLModel(contentsOf: url, configuration: config)
        row.load_ms = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
        let input = try makeInputs(model)
        let options = MLPredictionOptions()
        coolDown()
        for _ in 0..<job.warmup { _ = try model.prediction(from: input, options: options) }
        var samples: [Double] = []
        samples.reserveCapacity(job.iters)
        for _ in 0..<job.iters {
            let a = DispatchTime.now().uptimeNanoseconds
            _ = try model.prediction(from: input, options: options)
            let b = DispatchTime.now().uptimeNanoseconds
            samples.append(Double(b - a) / 1000.0)
        }
        let sorted = samples.sorted()
        row.median_us = percentile(sorted, 0.5)
        row.p10_us = percentile(sorted, 0.1)
        row.p90_us = percentile(sorted, 0.9)
        row.samples_us = (job.samples ?? true) ? samples : nil
    } catch {
        row.error = "\(error)"
    }
    row.thermal = thermalName()
    return row
}

func runBench() -> Int32 {
    let docs = FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0]
    let resultsURL = docs.appendingPathComponent("results.json")
    try? FileManager.default.removeItem(at: resultsURL)
    let job: Job
    do {
        job = try JSONDecoder().decode(Job.self, from: Data(contentsOf: docs.appendingPathComponent("job.json")))
        if job.models.isEmpty || job.compute_units.isEmpty || job.iters < 1 || job.warmup < 0 {
            throw BenchError.badJob("need models, compute_units, iters >= 1, warmup >= 0")
        }
        for u in job.compute_units { _ = try computeUnits(u) }
    } catch {
        print("CoreMLBench: cannot use Documents/job.json: \(error)")
        return 1
    }
    let version = Bundle.main.infoDictionary?["CFBundleShortVersionString"] as? String ?? "?"
    let build = Bundle.main.infoDictionary?["CFBundleVersion"] as? String ?? "?"
    var results = Results(app_version: "\(version) (\(build))", device: machineId(),
                          os: ProcessInfo.processInfo.operatingSystemVersionString,
                          thermal_before: thermalName(), thermal_after: "", results: [])
    for _ in 0..<(job.rounds ?? 1) {
        for m in job.models {
            for u in job.compute_units {
                results.results.append(timeOne(url: docs.appendingPathComponent(m), modelName: m, unitName: u, job: job))
            }
        }
    }
    results.thermal_after = thermalName()
    do {
        let data = try JSONEncoder().encode(results)
        try data.write(to: resultsURL, options: .atomic)
        print("RESULTS " + String(decoding: data, as: UTF8.self))
    } catch {
        print("CoreMLBench: cannot write results.json: \(error)")
        return 1
    }
    return 0
}
