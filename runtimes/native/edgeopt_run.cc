// edgeopt-run: run and time an edgeopt TVM artifact without Python.
//
// Links only the TVM runtime (libtvm_runtime.so) and tvm-ffi (libtvm_ffi.so), so it runs on a
// board that has neither Python nor the TVM compiler. Example (a CPU artifact folder written by
// `edgeopt compile`):
//
//   edgeopt-run build/r18-cpu --input input=x.npy --warmup 10 --repeat 100 --threads 2 \
//               --outputs out/ --timing timing.json
//
// Without --input, inputs are seeded random data made from the manifest's io spec. The timing
// JSON (median/p90/min/mean/stdev in ms, n, threads, arch) goes to stdout unless --timing is
// given. Exit codes: 0 success, 2 bad input (missing file, wrong shape/dtype, library for another
// architecture, truncated library), 1 any other failure. Errors go to stderr as one line
// starting "edgeopt-run: error:".
//
// The .npy reader/writer and the ELF header check are written here by hand: the format is small
// and fixed, and a C++ dependency for it would have to be built for every target as well.

#include <dlfcn.h>
#include <filesystem>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

// ---- errors --------------------------------------------------------------------------------

// Bad input from the user (exit 2), as opposed to a failure inside the runtime (exit 1).
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

#if defined(__aarch64__)
constexpr const char* kHostArch = "aarch64";
constexpr uint16_t kHostElfMachine = 183;  // EM_AARCH64
#elif defined(__x86_64__)
constexpr const char* kHostArch = "x86_64";
constexpr uint16_t kHostElfMachine = 62;  // EM_X86_64
#else
constexpr const char* kHostArch = "unknown";
constexpr uint16_t kHostElfMachine = 0;
#endif

std::string ElfMachineName(uint16_t m) {
  switch (m) {
    case 62: return "x86_64";
    case 183: return "aarch64";
    case 40: return "arm (32-bit)";
    case 243: return "riscv";
    default: return "machine type " + std::to_string(m);
  }
}

std::string ReadFile(const std::string& path, const std::string& what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InputError(what + " '" + path + "' does not exist or cannot be read");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// dlopen of a truncated or foreign library fails with a terse message or, for a truncated one,
// can crash on first touch of an unmapped page; check the ELF header and section table first.
void CheckLibrary(const std::string& path) {
  std::string bytes = ReadFile(path, "library");
  if (bytes.size() < 64 || bytes.compare(0, 4, "\x7f" "ELF") != 0) {
    throw InputError("library '" + path + "' is not an ELF shared library (" +
                     std::to_string(bytes.size()) + " bytes); expected a model.so from edgeopt compile");
  }
  if (bytes[4] != 2) throw InputError("library '" + path + "' is a 32-bit ELF; expected 64-bit");
  uint16_t machine;
  std::memcpy(&machine, bytes.data() + 18, 2);
  if (machine != kHostElfMachine) {
    throw InputError("library '" + path + "' was built for " + ElfMachineName(machine) +
                     "; this runner is " + kHostArch + ". Build the artifact for this target, "
                     "or use the runner built for " + ElfMachineName(machine));
  }
  uint64_t shoff;
  uint16_t shentsize, shnum;
  std::memcpy(&shoff, bytes.data() + 0x28, 8);
  std::memcpy(&shentsize, bytes.data() + 0x3A, 2);
  std::memcpy(&shnum, bytes.data() + 0x3C, 2);
  if (shoff + uint64_t(shentsize) * shnum > bytes.size()) {
    throw InputError("library '" + path + "' is truncated: " + std::to_string(bytes.size()) +
                     " bytes, but its section table ends at byte " +
                     std::to_string(shoff + uint64_t(shentsize) * shnum));
  }
}

// ---- dtypes and .npy -----------------------------------------------------------------------

struct DType {
  std::string name;   // manifest spelling: float32, int8, ...
  std::string descr;  // .npy spelling without byte order: f4, i1, ...
  DLDataType dl;
};

const std::vector<DType>& DTypes() {
  static const std::vector<DType> table = {
      {"float32", "f4", {kDLFloat, 32, 1}}, {"float64", "f8", {kDLFloat, 64, 1}},
      {"float16", "f2", {kDLFloat, 16, 1}}, {"int8", "i1", {kDLInt, 8, 1}},
      {"uint8", "u1", {kDLUInt, 8, 1}},     {"int16", "i2", {kDLInt, 16, 1}},
      {"int32", "i4", {kDLInt, 32, 1}},     {"int64", "i8", {kDLInt, 64, 1}},
      {"bool", "b1", {kDLBool, 8, 1}},
  };
  return table;
}

const DType& DTypeByName(const std::string& name) {
  for (const auto& d : DTypes())
    if (d.name == name) return d;
  throw InputError("unsupported dtype '" + name + "'");
}

const DType& DTypeByDL(DLDataType dl) {
  for (const auto& d : DTypes())
    if (d.dl.code == dl.code && d.dl.bits == dl.bits && d.dl.lanes == dl.lanes) return d;
  throw std::runtime_error("the model returned a tensor of an unsupported dtype (code " +
                           std::to_string(dl.code) + ", bits " + std::to_string(dl.bits) + ")");
}

size_t ItemSize(const DType& d) { return (d.dl.bits + 7) / 8; }

struct HostArray {
  std::string name;
  const DType* dtype = nullptr;
  std::vector<int64_t> shape;
  std::vector<char> data;
};

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

// Value of 'key' in the .npy header dict, e.g. "'<f4'" or "(1, 3)".
std::string NpyField(const std::string& header, const std::string& key, const std::string& path) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) throw InputError("'" + path + "': .npy header has no '" + key + "'");
  size_t colon = header.find(':', k);
  size_t start = header.find_first_not_of(' ', colon + 1);
  size_t end = header[start] == '(' ? header.find(')', start) + 1 : header.find_first_of(",}", start);
  return header.substr(start, end - start);
}

HostArray ReadNpy(const std::string& path) {
  std::string bytes = ReadFile(path, "input file");
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0)
    throw InputError("'" + path + "' is not a .npy file (numpy.save format)");
  int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, offset;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    offset = 10;
  } else {
    if (bytes.size() < 12) throw InputError("'" + path + "' is a truncated .npy file");
    uint32_t len;
    std::memcpy(&len, bytes.data() + 8, 4);
    header_len = len;
    offset = 12;
  }
  if (offset + header_len > bytes.size()) throw InputError("'" + path + "' is a truncated .npy file");
  std::string header = bytes.substr(offset, header_len);
  std::string descr = NpyField(header, "descr", path);
  std::string order = NpyField(header, "fortran_order", path);
  std::string shape_s = NpyField(header, "shape", path);
  if (order != "False") throw InputError("'" + path + "' is Fortran-ordered; save a C-ordered array");
  descr = descr.substr(1, descr.size() - 2);  // strip quotes
  if (!descr.empty() && (descr[0] == '<' || descr[0] == '|' || descr[0] == '=')) descr = descr.substr(1);
  else if (!descr.empty() && descr[0] == '>') throw InputError("'" + path + "' is big-endian");
  HostArray a;
  for (const auto& d : DTypes())
    if (d.descr == descr) a.dtype = &d;
  if (!a.dtype) throw InputError("'" + path + "' has unsupported dtype '" + descr + "'");
  std::string inner = shape_s.substr(1, shape_s.size() - 2);
  std::stringstream ss(inner);
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    tok.erase(std::remove(tok.begin(), tok.end(), ' '), tok.end());
    if (!tok.empty()) a.shape.push_back(std::stoll(tok));
  }
  size_t n = ItemSize(*a.dtype);
  for (int64_t d : a.shape) n *= static_cast<size_t>(d);
  size_t data_off = offset + header_len;
  if (bytes.size() - data_off < n)
    throw InputError("'" + path + "' is truncated: " + std::to_string(bytes.size() - data_off) +
                     " data bytes for shape " + ShapeString(a.shape) + ", expected " + std::to_string(n));
  a.data.assign(bytes.begin() + data_off, bytes.begin() + data_off + n);
  return a;
}

void WriteNpy(const std::string& path, const HostArray& a) {
  std::string header = "{'descr': '" + std::string(ItemSize(*a.dtype) == 1 ? "|" : "<") + a.dtype->descr +
                       "', 'fortran_order': False, 'shape': " + ShapeString(a.shape) + ", }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) throw InputError("cannot write '" + path + "'");
    f.write("\x93NUMPY\x01\x00", 8);
    uint16_t len = static_cast<uint16_t>(header.size());
    f.write(reinterpret_cast<const char*>(&len), 2);
    f.write(header.data(), header.size());
    f.write(a.data.data(), a.data.size());
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error("cannot rename " + tmp);
}

// ---- manifest ------------------------------------------------------------------------------

struct Spec {
  std::string name;
  const DType* dtype;
  std::vector<int64_t> shape;  // -1: symbolic dimension
};

struct Manifest {
  std::string library;
  std::vector<std::string> plugins;  // kernel libraries the model calls (e.g. the oneDNN plugin)
  std::vector<Spec> inputs, outputs;
};

ffi::Any Get(const ffi::json::Object& obj, const char* key, const std::string& where) {
  auto it = obj.find(ffi::String(key));
  if (it == obj.end()) throw InputError(where + " has no '" + key + "'");
  return (*it).second;
}

std::vector<Spec> ParseSpecs(const ffi::Any& value, const std::string& where) {
  std::vector<Spec> out;
  for (const ffi::Any& item : value.cast<ffi::json::Array>()) {
    auto obj = item.cast<ffi::json::Object>();
    Spec s;
    s.name = std::string(Get(obj, "name", where).cast<ffi::String>());
    s.dtype = &DTypeByName(std::string(Get(obj, "dtype", where).cast<ffi::String>()));
    for (const ffi::Any& d : Get(obj, "shape", where).cast<ffi::json::Array>()) {
      auto dim = d.try_cast<int64_t>();
      s.shape.push_back(dim.has_value() ? *dim : -1);
    }
    out.push_back(s);
  }
  return out;
}

Manifest ReadManifest(const std::string& folder) {
  std::string path = folder + "/manifest.json";
  std::string text = ReadFile(path, "manifest");
  ffi::String err;
  ffi::json::Value root = ffi::json::Parse(text, &err);
  if (!err.empty()) throw InputError("'" + path + "' is not valid JSON: " + std::string(err));
  Manifest m;
  try {
    auto obj = root.cast<ffi::json::Object>();
    auto format = std::string(Get(obj, "format", path).cast<ffi::String>());
    if (format != "tvm")
      throw InputError("'" + folder + "' is a " + format + " artifact; edgeopt-run runs tvm artifacts "
                       "(edgeopt compile)");
    auto files = Get(obj, "files", path).cast<ffi::json::Array>();
    if (files.empty()) throw InputError(path + " lists no files");
    m.library = folder + "/" + std::string(files[0].cast<ffi::String>());
    auto plugins = obj.find(ffi::String("plugins"));
    if (plugins != obj.end()) {
      for (const ffi::Any& name : (*plugins).second.cast<ffi::json::Array>())
        m.plugins.push_back(folder + "/" + std::string(name.cast<ffi::String>()));
    }
    auto io = Get(obj, "io", path).cast<ffi::json::Object>();
    m.inputs = ParseSpecs(Get(io, "inputs", path), path);
    m.outputs = ParseSpecs(Get(io, "outputs", path), path);
  } catch (const ffi::Error& e) {
    throw InputError("'" + path + "' is not an edgeopt manifest: " + e.message());
  }
  return m;
}

// ---- tensors -------------------------------------------------------------------------------

struct AlignedAlloc {
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    t->data = std::aligned_alloc(64, std::max<size_t>(64, (n + 63) / 64 * 64));
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

ffi::Tensor ToDevice(const HostArray& a) {
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::ShapeView(a.shape.data(), a.shape.size()),
                                           a.dtype->dl, DLDevice{kDLCPU, 0});
  std::memcpy(t.data_ptr(), a.data.data(), a.data.size());
  return t;
}

HostArray ToHost(const ffi::Tensor& t, const std::string& name) {
  HostArray a;
  a.name = name;
  a.dtype = &DTypeByDL(t.dtype());
  for (int64_t d : t.shape()) a.shape.push_back(d);
  if (!t.IsContiguous()) throw std::runtime_error("output '" + name + "' is not contiguous");
  size_t n = ffi::GetDataSize(t);
  const char* src = static_cast<const char*>(t.data_ptr()) + t.byte_offset();
  a.data.assign(src, src + n);
  return a;
}

HostArray RandomInput(const Spec& s, std::mt19937_64& rng) {
  HostArray a;
  a.name = s.name;
  a.dtype = s.dtype;
  for (int64_t d : s.shape) a.shape.push_back(d < 0 ? 1 : d);  // symbolic axes: batch 1
  size_t n = 1;
  for (int64_t d : a.shape) n *= static_cast<size_t>(d);
  a.data.resize(n * ItemSize(*a.dtype));
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_int_distribution<int> small(0, 9);
  for (size_t i = 0; i < n; ++i) {
    char* p = a.data.data() + i * ItemSize(*a.dtype);
    const std::string& dt = a.dtype->name;
    if (dt == "float32") { float v = float(normal(rng)); std::memcpy(p, &v, 4); }
    else if (dt == "float64") { double v = normal(rng); std::memcpy(p, &v, 8); }
    else if (dt == "int64") { int64_t v = small(rng); std::memcpy(p, &v, 8); }
    else if (dt == "int32") { int32_t v = small(rng); std::memcpy(p, &v, 4); }
    else if (dt == "int16") { int16_t v = int16_t(small(rng)); std::memcpy(p, &v, 2); }
    else if (dt == "int8" || dt == "uint8") { *p = char(small(rng)); }
    else if (dt == "bool") { *p = char(small(rng) % 2); }
    else throw InputError("cannot make random data for input '" + s.name + "' of dtype " + dt);
  }
  return a;
}

void CheckAgainstSpec(const HostArray& a, const Spec& s, const std::string& source) {
  bool ok = a.dtype == s.dtype && a.shape.size() == s.shape.size();
  for (size_t i = 0; ok && i < a.shape.size(); ++i) ok = s.shape[i] < 0 || s.shape[i] == a.shape[i];
  if (!ok) {
    std::vector<int64_t> expected = s.shape;
    throw InputError("input '" + s.name + "' from '" + source + "' is " + a.dtype->name + " " +
                     ShapeString(a.shape) + "; the manifest expects " + s.dtype->name + " " +
                     ShapeString(expected) + " (-1: any size)");
  }
}

// ---- command line --------------------------------------------------------------------------

struct Options {
  std::string artifact;
  std::map<std::string, std::string> input_files;
  int warmup = 10, repeat = 100, threads = 0;
  uint64_t seed = 0;
  std::string outputs_dir, timing_file;
};

const char* kUsage =
    "usage: edgeopt-run ARTIFACT_DIR [--input NAME=FILE.npy]... [--seed N] [--warmup N]\n"
    "                   [--repeat N] [--threads N] [--outputs DIR] [--timing FILE]\n"
    "Runs the TVM artifact in ARTIFACT_DIR (manifest.json + model.so) and prints timing JSON.\n";

int ParseInt(const std::string& flag, const std::string& v, int lo) {
  try {
    size_t used;
    long x = std::stol(v, &used);
    if (used == v.size() && x >= lo && x <= 1000000000) return int(x);
  } catch (const std::exception&) {
  }
  throw InputError(flag + " expects an integer >= " + std::to_string(lo) + ", got '" + v + "'");
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw InputError(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") { std::cout << kUsage; std::exit(0); }
    else if (a == "--input") {
      std::string v = value();
      size_t eq = v.find('=');
      if (eq == std::string::npos || eq == 0) throw InputError("--input expects NAME=FILE.npy, got '" + v + "'");
      o.input_files[v.substr(0, eq)] = v.substr(eq + 1);
    }
    else if (a == "--seed") o.seed = uint64_t(ParseInt(a, value(), 0));
    else if (a == "--warmup") o.warmup = ParseInt(a, value(), 0);
    else if (a == "--repeat") o.repeat = ParseInt(a, value(), 1);
    else if (a == "--threads") o.threads = ParseInt(a, value(), 1);
    else if (a == "--outputs") o.outputs_dir = value();
    else if (a == "--timing") o.timing_file = value();
    else if (!a.empty() && a[0] == '-') throw InputError("unknown option '" + a + "'\n" + kUsage);
    else if (o.artifact.empty()) o.artifact = a;
    else throw InputError("more than one artifact given: '" + o.artifact + "' and '" + a + "'");
  }
  if (o.artifact.empty()) throw InputError(std::string("no artifact folder given\n") + kUsage);
  return o;
}

std::string Num(double v) {
  std::ostringstream s;
  s.precision(6);
  s << std::fixed << v;
  return s.str();
}

std::string TimingJson(std::vector<double> ms, const Options& o) {
  std::sort(ms.begin(), ms.end());
  size_t n = ms.size();
  double median = n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
  // Nearest-rank p90, as edgeopt.runtimes.timing computes it.
  size_t k = size_t(std::ceil(0.9 * double(n)));
  double p90 = ms[std::min(n - 1, k == 0 ? 0 : k - 1)];
  double mean = 0;
  for (double v : ms) mean += v;
  mean /= double(n);
  double var = 0;
  for (double v : ms) var += (v - mean) * (v - mean);
  double stdev = n > 1 ? std::sqrt(var / double(n - 1)) : 0.0;
  return "{\"median_ms\": " + Num(median) + ", \"p90_ms\": " + Num(p90) + ", \"min_ms\": " + Num(ms[0]) +
         ", \"mean_ms\": " + Num(mean) + ", \"stdev_ms\": " + Num(stdev) + ", \"n\": " + std::to_string(n) +
         ", \"warmup\": " + std::to_string(o.warmup) + ", \"threads\": " + std::to_string(o.threads) +
         ", \"arch\": \"" + kHostArch + "\"}";
}

std::vector<ffi::Tensor> Flatten(const ffi::Any& ret) {
  std::vector<ffi::Tensor> out;
  if (auto t = ret.try_cast<ffi::Tensor>()) {
    out.push_back(*t);
  } else if (auto arr = ret.try_cast<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *arr) {
      auto sub = Flatten(item);
      out.insert(out.end(), sub.begin(), sub.end());
    }
  } else {
    throw std::runtime_error("the model's main returned " + std::string(ret.GetTypeKey()) +
                             ", expected a tensor or a tuple of tensors");
  }
  return out;
}

int Run(const Options& o) {
  Manifest m = ReadManifest(o.artifact);
  for (const auto& kv : o.input_files) {
    bool known = std::any_of(m.inputs.begin(), m.inputs.end(), [&](const Spec& s) { return s.name == kv.first; });
    if (!known) {
      std::string names;
      for (const auto& s : m.inputs) names += (names.empty() ? "" : ", ") + s.name;
      throw InputError("--input names '" + kv.first + "', which the model does not take; its inputs: " + names);
    }
  }
  std::mt19937_64 rng(o.seed);
  std::vector<HostArray> host_inputs;
  for (const Spec& s : m.inputs) {
    auto it = o.input_files.find(s.name);
    if (it == o.input_files.end()) {
      host_inputs.push_back(RandomInput(s, rng));
    } else {
      HostArray a = ReadNpy(it->second);
      a.name = s.name;
      CheckAgainstSpec(a, s, it->second);
      host_inputs.push_back(std::move(a));
    }
  }
  CheckLibrary(m.library);
  for (const std::string& plugin : m.plugins) {
    CheckLibrary(plugin);
    // RTLD_GLOBAL: the plugin registers the TVM global functions the model calls
    if (dlopen(plugin.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr)
      throw InputError("cannot load kernel plugin '" + plugin + "': " + dlerror());
  }
  if (!m.plugins.empty()) {
    // TVM pins its pool's threads when it sizes the pool, and the plugin's TBB workers would
    // share cores with threads the OS cannot move; as the Python runner does, leave thread
    // placement to the OS.
    setenv("TVM_BIND_THREADS", "0", 0);
  }

  if (o.threads > 0) {
    // TVM sizes its pool once, from TVM_NUM_THREADS or else half the logical CPUs (it assumes
    // hyper-threading), and config_threadpool cannot add workers: set the size first.
    setenv("TVM_NUM_THREADS", std::to_string(o.threads).c_str(), 0);
    // Affinity mode 1 ("big cores"): every core of a homogeneous CPU; as the Python runner does.
    ffi::Function::GetGlobalRequired("runtime.config_threadpool")(1, o.threads);
    if (auto set_threads = ffi::Function::GetGlobal("edgeopt.onednn.set_threads"))
      (*set_threads)(static_cast<int64_t>(o.threads));
  }
  ffi::Module lib = ffi::Module::LoadFromFile(m.library);
  auto load_exec = lib->GetFunction("vm_load_executable");
  if (!load_exec.has_value())
    throw InputError("'" + m.library + "' is not a Relax VM library (no vm_load_executable)");
  ffi::Module vm = (*load_exec)().cast<ffi::Module>();
  constexpr int kPooledAllocator = 2;
  (*vm->GetFunction("vm_initialization"))(static_cast<int>(kDLCPU), 0, kPooledAllocator);
  ffi::Function main_fn = *vm->GetFunction("main");

  std::vector<ffi::Tensor> device_inputs;
  for (const auto& a : host_inputs) device_inputs.push_back(ToDevice(a));
  std::vector<ffi::AnyView> args(device_inputs.begin(), device_inputs.end());
  auto call = [&]() {
    ffi::Any ret;
    main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &ret);
    return ret;
  };

  ffi::Any ret = call();
  for (int i = 0; i < o.warmup; ++i) call();
  std::vector<double> ms;
  for (int i = 0; i < o.repeat; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    call();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }

  if (!o.outputs_dir.empty()) {
    std::error_code made;
    std::filesystem::create_directories(o.outputs_dir, made);  // a missing folder is created
    if (made) throw InputError("cannot create --outputs folder '" + o.outputs_dir + "': " + made.message());
    std::vector<ffi::Tensor> outs = Flatten(ret);
    for (size_t i = 0; i < outs.size(); ++i) {
      std::string name = i < m.outputs.size() ? m.outputs[i].name : "output_" + std::to_string(i);
      WriteNpy(o.outputs_dir + "/" + std::to_string(i) + "_" + name + ".npy", ToHost(outs[i], name));
    }
  }
  std::string json = TimingJson(ms, o);
  if (o.timing_file.empty()) {
    std::cout << json << std::endl;
  } else {
    std::ofstream f(o.timing_file + ".tmp");
    f << json << "\n";
    f.close();
    if (!f || std::rename((o.timing_file + ".tmp").c_str(), o.timing_file.c_str()) != 0)
      throw InputError("cannot write timing file '" + o.timing_file + "'");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(ParseArgs(argc, argv));
  } catch (const InputError& e) {
    std::cerr << "edgeopt-run: error: " << e.what() << std::endl;
    return 2;
  } catch (const ffi::Error& e) {
    std::cerr << "edgeopt-run: error: " << e.kind() << ": " << e.message() << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "edgeopt-run: error: " << e.what() << std::endl;
    return 1;
  }
}
