// fbnet-runner: times ExecuTorch programs with fbnet-lut's measurement protocol in one process.
//
//   fbnet-runner [options] KEY=PATH.pte ...        (or PATH.pte: the key is the file's stem)
//   fbnet-runner [options] --programs LIST          (one KEY=PATH per line: long lists over adb)
//   fbnet-runner --version
//
// Every program is loaded (and its inputs made) before anything is timed; then, for every round,
// each program runs `--warmup` untimed and `--repeats` timed executions in a row, in the round's
// order: the plan file's (one line per round, keys separated by blanks: the Python protocol's
// shuffled order), else the given order, shuffled per round with `--shuffle --seed S`. Reference
// programs (`--reference KEY`) are timed in every round; `--stable-tol` warms up on the first
// reference until two consecutive batch medians differ by less than the tolerance. Between rounds:
// optional cool-down after each program (`--cooldown-ms`) and sysfs temperature / CPU frequency reads (`--sensors`, `--sysfs DIR`).
// Threads (`--threads`, the ExecuTorch thread pool, sized before any load) and CPU affinity
// (`--cpus 4,5` or `--cpu-mask f0`) are set inside the process.
//
// Output: JSON lines on stdout, flushed line by line: "start" (version, build id, ExecuTorch
// version, threads, CPUs), "loaded", "warmup", "round_start"/"round_end" (sensors, reference
// medians), one "sample" line per (round, program) with every timed sample in microseconds,
// "error" (stage, key, message) and "done". Exit codes: 0 done, 1 an execution failed, 2 bad
// arguments or a program that does not load. FBNET_RUNNER_ABORT_AFTER=N (a test knob) aborts after
// N sample lines, to test that a crash keeps what was measured.
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <dirent.h>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <executorch/devtools/etdump/etdump_flatcc.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#ifndef FBNET_RUNNER_VERSION
#define FBNET_RUNNER_VERSION "dev"
#endif
#ifndef FBNET_RUNNER_SOURCE_ID
#define FBNET_RUNNER_SOURCE_ID "unknown"
#endif
#ifndef FBNET_EXECUTORCH_VERSION
#define FBNET_EXECUTORCH_VERSION "unknown"
#endif

// The wheel ships the thread pool library but not its header: the two functions used here.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

using executorch::extension::Module;
using executorch::runtime::EValue;
using executorch::runtime::Method;

namespace {

std::string esc(const std::string& s) {
  std::string o;
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += static_cast<char>(c);
    } else if (c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += static_cast<char>(c);
    }
  }
  return o;
}

void emit(const std::string& line) {
  std::fputs(line.c_str(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3f", v);
  return b;
}

[[noreturn]] void die(int code, const std::string& stage, const std::string& key, const std::string& msg) {
  emit("{\"event\":\"error\",\"stage\":\"" + esc(stage) + "\",\"key\":\"" + esc(key) + "\",\"message\":\"" +
       esc(msg) + "\"}");
  std::exit(code);
}

struct Program {
  std::string key, path;
  std::unique_ptr<Module> module;
  Method* method = nullptr;
  std::vector<std::vector<float>> buffers;
  std::vector<executorch::extension::TensorPtr> tensors;
  bool reference = false;
};

struct Options {
  int threads = 1, warmup = 10, repeats = 50, rounds = 1;
  unsigned long long seed = 0;
  bool shuffle = false, sensors = false, load_only = false;
  double stable_tol = 0.0, stable_max_s = 30.0, cooldown_ms = 0.0;
  std::string cpus, plan, sysfs = "/sys/", etdump_dir;
  std::vector<std::string> references, programs;
};

std::vector<int> parse_cpus(const std::string& spec, bool mask) {
  std::vector<int> out;
  if (mask) {
    std::string h = spec.rfind("0x", 0) == 0 ? spec.substr(2) : spec;
    if (h.empty() || h.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
      die(2, "args", "", "cpu mask " + spec + " is not hexadecimal");
    int bit = 0;
    for (auto it = h.rbegin(); it != h.rend(); ++it, bit += 4) {
      int v = std::stoi(std::string(1, *it), nullptr, 16);
      for (int j = 0; j < 4; ++j)
        if (v & (1 << j)) out.push_back(bit + j);
    }
  } else {
    std::stringstream ss(spec);
    std::string tok;
    while (std::getline(ss, tok, ','))
      if (!tok.empty()) out.push_back(std::stoi(tok));
  }
  if (out.empty()) die(2, "args", "", "no CPU in " + spec);
  return out;
}

std::string read_file(const std::string& p) {
  std::ifstream f(p);
  std::string s;
  if (f) std::getline(f, s);
  return s;
}

std::vector<std::string> list_dir(const std::string& dir, const std::string& prefix) {
  std::vector<std::string> out;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n.rfind(prefix, 0) == 0) out.push_back(n);
    }
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// {"thermal_zone0 cpu-big": 41.5, ...} and {"cpu4": 2314.0, ...} (MHz), where readable.
std::string sensors_json(const std::string& sysfs) {
  std::string t, f;
  for (const auto& z : list_dir(sysfs + "class/thermal", "thermal_zone")) {
    std::string base = sysfs + "class/thermal/" + z + "/", v = read_file(base + "temp");
    if (v.empty()) continue;
    double c = std::atof(v.c_str());
    if (c > 1000) c /= 1000.0;
    t += (t.empty() ? "" : ",") + std::string("\"") + esc(z + " " + read_file(base + "type")) + "\":" + num(c);
  }
  for (const auto& c : list_dir(sysfs + "devices/system/cpu", "cpu")) {
    if (c.size() < 4 || c.find_first_not_of("0123456789", 3) != std::string::npos) continue;
    std::string v = read_file(sysfs + "devices/system/cpu/" + c + "/cpufreq/scaling_cur_freq");
    if (!v.empty()) f += (f.empty() ? "" : ",") + std::string("\"") + c + "\":" + num(std::atof(v.c_str()) / 1000.0);
  }
  return "\"temps\":{" + t + "},\"freqs\":{" + f + "}";
}

double median(std::vector<double> xs) {
  std::sort(xs.begin(), xs.end());
  size_t n = xs.size();
  return n == 0 ? 0.0 : (n % 2 ? xs[n / 2] : 0.5 * (xs[n / 2 - 1] + xs[n / 2]));
}

void load(Program& p, bool etdump) {
  std::unique_ptr<executorch::runtime::EventTracer> tracer;
  if (etdump) tracer = std::make_unique<executorch::etdump::ETDumpGen>();
  if (access(p.path.c_str(), R_OK) != 0) die(2, "load", p.key, "cannot read " + p.path);
  p.module = std::make_unique<Module>(p.path, Module::LoadMode::File, std::move(tracer));
  auto err = p.module->load_forward();
  if (err != executorch::runtime::Error::Ok) {
    char b[64];
    std::snprintf(b, sizeof b, "error 0x%x", static_cast<unsigned>(err));
    die(2, "load", p.key, "not a loadable ExecuTorch program: " + p.path + " (" + b + ")");
  }
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  auto m = p.module->method("forward");
#pragma GCC diagnostic pop
  if (!m.ok()) die(2, "load", p.key, "no forward method in " + p.path);
  p.method = *m;
  auto meta = p.module->method_meta("forward");
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (size_t i = 0; i < meta->num_inputs(); ++i) {
    auto info = meta->input_tensor_meta(i);
    if (!info.ok()) die(2, "load", p.key, "input " + std::to_string(i) + " is not a tensor");
    if (info->scalar_type() != executorch::aten::ScalarType::Float)
      die(2, "load", p.key, "input " + std::to_string(i) + " is not float32");
    std::vector<executorch::aten::SizesType> sizes(info->sizes().begin(), info->sizes().end());
    size_t n = info->nbytes() / sizeof(float);
    p.buffers.emplace_back(n);
    for (auto& x : p.buffers.back()) x = u(rng);
    p.tensors.push_back(executorch::extension::from_blob(p.buffers.back().data(), sizes));
  }
}

void set_inputs(Program& p) {
  for (size_t i = 0; i < p.tensors.size(); ++i) {
    auto err = p.method->set_input(EValue(*p.tensors[i]), i);
    if (err != executorch::runtime::Error::Ok) die(1, "execute", p.key, "set_input failed");
  }
}

std::vector<double> time_program(Program& p, int warmup, int repeats) {
  using clk = std::chrono::steady_clock;
  std::vector<double> out;
  out.reserve(repeats);
  for (int i = 0; i < warmup + repeats; ++i) {
    set_inputs(p);
    auto t0 = clk::now();
    auto err = p.method->execute();
    auto t1 = clk::now();
    if (err != executorch::runtime::Error::Ok) {
      char b[64];
      std::snprintf(b, sizeof b, "execute failed (error 0x%x)", static_cast<unsigned>(err));
      die(1, "execute", p.key, b);
    }
    if (i >= warmup) out.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  auto val = [&](int& i, const std::string& a) -> std::string {
    auto eq = a.find('=');
    if (eq != std::string::npos) return a.substr(eq + 1);
    if (i + 1 >= argc) die(2, "args", "", a + " needs a value");
    return argv[++i];
  };
  auto integer = [&](const std::string& name, const std::string& v, int lo) {
    char* end = nullptr;
    long x = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end || x < lo) die(2, "args", "", name + " must be an integer >= " + std::to_string(lo));
    return static_cast<int>(x);
  };
  bool mask = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i], name = a.substr(0, a.find('='));
    if (name == "--threads") o.threads = integer(name, val(i, a), 1);
    else if (name == "--warmup") o.warmup = integer(name, val(i, a), 0);
    else if (name == "--repeats") o.repeats = integer(name, val(i, a), 1);
    else if (name == "--rounds") o.rounds = integer(name, val(i, a), 1);
    else if (name == "--seed") o.seed = std::strtoull(val(i, a).c_str(), nullptr, 10);
    else if (name == "--shuffle") o.shuffle = true;
    else if (name == "--sensors") o.sensors = true;
    else if (name == "--load-only") o.load_only = true;
    else if (name == "--cpus") o.cpus = val(i, a), mask = false;
    else if (name == "--cpu-mask") o.cpus = val(i, a), mask = true;
    else if (name == "--plan") o.plan = val(i, a);
    else if (name == "--programs") {
      std::string file = val(i, a), line;
      std::ifstream f(file);
      if (!f) die(2, "args", "", "cannot read program list " + file);
      while (std::getline(f, line))
        if (!line.empty()) o.programs.push_back(line);
    }
    else if (name == "--sysfs") o.sysfs = val(i, a);
    else if (name == "--etdump-dir") o.etdump_dir = val(i, a);
    else if (name == "--reference") o.references.push_back(val(i, a));
    else if (name == "--stable-tol") o.stable_tol = std::atof(val(i, a).c_str());
    else if (name == "--stable-max-s") o.stable_max_s = std::atof(val(i, a).c_str());
    else if (name == "--cooldown-ms") o.cooldown_ms = std::atof(val(i, a).c_str());
    else if (a.rfind("--", 0) == 0) die(2, "args", "", "unknown option " + a);
    else o.programs.push_back(a);
  }
  if (!o.cpus.empty()) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int c : parse_cpus(o.cpus, mask)) CPU_SET(c, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) die(2, "args", "", "cannot pin to CPUs " + o.cpus);
  }
  if (!o.sysfs.empty() && o.sysfs.back() != '/') o.sysfs += '/';
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string build = std::string("src:") + FBNET_RUNNER_SOURCE_ID + " " + __DATE__ + " " + __TIME__;
  const std::string ident = "\"runner\":\"fbnet-runner\",\"version\":\"" FBNET_RUNNER_VERSION "\",\"build\":\"" +
                            esc(build) + "\",\"executorch\":\"" FBNET_EXECUTORCH_VERSION "\"";
  if (argc == 2 && std::string(argv[1]) == "--version") {
    emit("{" + ident + "}");
    return 0;
  }
  Options o = parse(argc, argv);
  if (o.programs.empty()) die(2, "args", "", "no programs (KEY=PATH.pte ...)");
  // The thread pool is sized before any program is loaded: XNNPACK captures it at load time.
  executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(o.threads);
  cpu_set_t set;
  std::string cpus;
  if (sched_getaffinity(0, sizeof set, &set) == 0)
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus += (cpus.empty() ? "" : ",") + std::to_string(c);
  emit("{\"event\":\"start\"," + ident + ",\"threads\":" + std::to_string(o.threads) + ",\"cpus\":[" + cpus +
       "],\"programs\":" + std::to_string(o.programs.size()) + "}");

  std::vector<Program> progs(o.programs.size());
  std::map<std::string, Program*> by_key;
  for (size_t i = 0; i < o.programs.size(); ++i) {
    const std::string& a = o.programs[i];
    auto eq = a.find('=');
    Program& p = progs[i];
    p.path = eq == std::string::npos ? a : a.substr(eq + 1);
    if (eq != std::string::npos) {
      p.key = a.substr(0, eq);
    } else {
      std::string base = p.path.substr(p.path.find_last_of('/') + 1);
      p.key = base.substr(0, base.rfind('.'));
    }
    if (by_key.count(p.key)) die(2, "args", p.key, "program key given twice");
    by_key[p.key] = &p;
  }
  for (const auto& r : o.references) {
    if (!by_key.count(r)) die(2, "args", r, "reference is not one of the programs");
    by_key[r]->reference = true;
  }
  for (auto& p : progs) {
    auto t0 = std::chrono::steady_clock::now();
    load(p, !o.etdump_dir.empty());
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    emit("{\"event\":\"loaded\",\"key\":\"" + esc(p.key) + "\",\"load_ms\":" + num(ms) + "}");
  }
  if (o.load_only) {
    emit("{\"event\":\"done\",\"samples\":0}");
    return 0;
  }

  // The rounds: the plan's orders, else the given order (shuffled per round with --shuffle).
  std::vector<std::vector<Program*>> rounds;
  if (!o.plan.empty()) {
    std::ifstream f(o.plan);
    if (!f) die(2, "args", "", "cannot read plan " + o.plan);
    std::string line;
    while (std::getline(f, line)) {
      std::stringstream ss(line);
      std::string k;
      std::vector<Program*> r;
      while (ss >> k) {
        if (!by_key.count(k)) die(2, "args", k, "plan names a program that was not given");
        r.push_back(by_key[k]);
      }
      if (!r.empty()) rounds.push_back(r);
    }
  } else {
    for (int r = 0; r < o.rounds; ++r) {
      std::vector<Program*> order;
      for (auto& p : progs) order.push_back(&p);
      if (o.shuffle) {
        std::mt19937_64 rng(o.seed * 1000 + r);
        std::shuffle(order.begin(), order.end(), rng);
      }
      rounds.push_back(order);
    }
  }

  // Warm-up until stable: batches of the first reference until two consecutive medians agree.
  if (o.stable_tol > 0) {
    Program* ref = o.references.empty() ? &progs[0] : by_key[o.references[0]];
    auto t0 = std::chrono::steady_clock::now();
    double prev = -1, cur = 0;
    int batches = 0;
    bool stable = false;
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < o.stable_max_s) {
      cur = median(time_program(*ref, 0, std::max(5, o.repeats)));
      ++batches;
      if (prev > 0 && std::abs(cur - prev) / prev < o.stable_tol) {
        stable = true;
        break;
      }
      prev = cur;
    }
    emit("{\"event\":\"warmup\",\"key\":\"" + esc(ref->key) + "\",\"batches\":" + std::to_string(batches) +
         ",\"median_us\":" + num(cur) + ",\"stable\":" + (stable ? "true" : "false") + "}");
  }

  const char* abort_env = std::getenv("FBNET_RUNNER_ABORT_AFTER");
  long abort_after = abort_env ? std::atol(abort_env) : -1;
  long n_samples = 0;
  for (size_t r = 0; r < rounds.size(); ++r) {
    emit("{\"event\":\"round_start\",\"round\":" + std::to_string(r) +
         (o.sensors ? "," + sensors_json(o.sysfs) : std::string()) + "}");
    std::string refs;
    for (Program* p : rounds[r]) {
      if (abort_after >= 0 && n_samples >= abort_after) std::abort();
      auto xs = time_program(*p, o.warmup, o.repeats);
      std::string s;
      for (double x : xs) s += (s.empty() ? "" : ",") + num(x);
      emit("{\"event\":\"sample\",\"round\":" + std::to_string(r) + ",\"key\":\"" + esc(p->key) +
           "\",\"reference\":" + (p->reference ? "true" : "false") + ",\"samples_us\":[" + s + "]}");
      ++n_samples;
      if (o.cooldown_ms > 0) std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(o.cooldown_ms));
      if (p->reference) refs += (refs.empty() ? "\"" : ",\"") + esc(p->key) + "\":" + num(median(xs));
    }
    emit("{\"event\":\"round_end\",\"round\":" + std::to_string(r) + ",\"reference_median_us\":{" + refs + "}" +
         (o.sensors ? "," + sensors_json(o.sysfs) : std::string()) + "}");
  }
  if (!o.etdump_dir.empty()) {
    for (auto& p : progs) {
      auto* gen = static_cast<executorch::etdump::ETDumpGen*>(p.module->event_tracer());
      auto res = gen->get_etdump_data();
      std::string path = o.etdump_dir + "/" + p.key + ".etdp";
      if (FILE* f = std::fopen(path.c_str(), "wb")) {
        std::fwrite(res.buf, 1, res.size, f);
        std::fclose(f);
      } else {
        die(1, "etdump", p.key, "cannot write " + path);
      }
      std::free(res.buf);
    }
  }
  emit("{\"event\":\"done\",\"samples\":" + std::to_string(n_samples) + "}");
  return 0;
}
