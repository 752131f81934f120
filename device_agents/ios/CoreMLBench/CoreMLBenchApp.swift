// Headless entry point: run the job once on launch, then exit so that
// `xcrun devicectl device process launch --console` returns with the app's status.
import SwiftUI

@main
struct CoreMLBenchApp: App {
    init() {
        DispatchQueue.global(qos: .userInitiated).async {
            let status = runBench()
            exit(status)
        }
    }

    var body: some Scene {
        WindowGroup { Text("CoreMLBench: timing Core ML models…") }
    }
}
