// edgeopt's oneDNN kernel plugin: convolutions and matmuls of a TVM artifact run on oneDNN.
//
// A TVM artifact built with `BuildConfig(kernels="onednn")` calls these functions through Relax's
// `call_dps_packed` (destination passing: the output buffer is the last argument); TVM keeps the
// rest of the model (elementwise ops, pooling, memory planning). Loading this library registers
// the functions as TVM globals, so it must be loaded (RTLD_GLOBAL) before the artifact's model.so:
// `edgeopt.runtimes` and the native runner `edgeopt-run` do it from the artifact's manifest.
//
// Built against oneDNN 3.x with its TBB CPU runtime (PyPI's onednn-cpu-tbb 2023.2.0 = oneDNN 3.2,
// with tbb, tbb-devel and intel-cmplr-lib-rt: requirements/onednn.txt, installed into the venv,
// which is the prefix CMakeLists.txt is given). TBB rather than OpenMP because a TBB worker that
// the OS deschedules (another process on the core) does not stall the call: the threads still
// running, the caller included, take its share of the work, where an OpenMP region waits at
// its barrier for every thread.
//
// Functions (int64 parameters travel as one shape, floats as two scalars):
//   edgeopt.onednn.conv2d(p, lo, hi, src, weight, bias, [residual,] out)
//       fp32, src/out NHWC, weight OIHW (grouped: O, I/G, KH, KW), bias (O). A bfloat16
//       weight makes it a bf16 conv: src is converted to bf16 on the way in, the products are
//       accumulated in fp32, and bias, residual and activation are applied in fp32; out is fp32,
//       or bf16 where it only feeds another bf16 call (src may then be bf16: no conversion).
//       p = [stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right, dilation_h, dilation_w,
//            groups, activation]; activation 0 none, 1 relu, 2 clip(lo, hi), 4 swish (x * sigmoid(x)),
//            5 hardswish (x * relu6(x + 3) / 6).
//       With a residual: out = act(conv(src) + bias + residual).
//   edgeopt.onednn.conv2d_transpose(p, lo, hi, src, weight, bias, out)
//       fp32 transposed conv (deconvolution), src/out NCHW, weight (O, I/G, KH, KW), bias (O);
//       p as conv2d's with the end paddings less the output padding and activation 0.
//   edgeopt.onednn.matmul(p, lo, hi, src, weight, bias, [residual,] out)
//       fp32, src (..., K), weight (K, N), bias (N), out (..., N); p = [activation] with
//       3 gelu (erf) added to the codes above. A bfloat16 weight: bf16 as for conv2d.
//   edgeopt.onednn.conv2d_q(p, lo, hi, src, weight, bias, scales, [residual, residual_scale,] out)
//   edgeopt.onednn.matmul_q(p, lo, hi, src, weight, bias, scales, out)
//       int8: src uint8/int8 (NHWC, or (..., K)), weight int8 (OIHW / (K, N)), bias int32 in the
//       accumulator's units (scale src_scale * weight_scale), scales float32 per output channel
//       (src_scale * weight_scale / out_scale), out uint8/int8: the QDQ chain
//       quantize(act(dequantize(src) (*) dequantize(weight) + bias)) in integer arithmetic.
//       p = conv2d's 10 (or matmul's 1) parameters, then src and out zero points; lo and hi
//       are the clip bounds in output units. A conv2d_q residual (uint8/int8, out's shape, its
//       zero point appended to p, residual_scale its scale / out_scale) is added before the
//       activation: quantize(act(conv + dequantize(residual))), a ResNet block's end.
//   edgeopt.onednn.batch_matmul(a, b, out)
//       fp32 (..., M, K) x (..., K, N) with equal batch dimensions, both operands computed at
//       run time (attention's query x key and scores x value).
//   edgeopt.onednn.layer_norm(eps, src, gamma, beta, out)
//       fp32 layer normalization over the last axis with scale and shift.
//   edgeopt.onednn.softmax(src, out)
//       fp32 softmax over the last axis.
//   edgeopt.onednn.max_pool2d(p, src, out)
//       max pooling, src/out NHWC, float32, uint8 or int8 (in int8 the QDQ chain
//       quantize(max_pool(dequantize(x))) with one scale is the pooling of x itself);
//       p = [kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left]: the right and bottom
//       padding follow from the output's shape (ceil mode included).
//   edgeopt.onednn.clear_cache(): drop every cached primitive and held weight (a runner calls it
//       when it closes, so weights of unloaded models are not kept alive).
//   edgeopt.onednn.set_threads(n): the threads oneDNN runs on (the runners' --threads): this build
//       (oneDNN 3.x, TBB runtime) runs every call inside a tbb::task_arena of n slots (the calling
//       thread plus n - 1 TBB workers; oneDNN splits its work by the arena's max_concurrency);
//       n <= 0 goes back to the caller's own arena (TBB's default: every core the process may use).
//   edgeopt.onednn.version(): the plugin's interface version, checked when an artifact loads.
//
// Primitives and the weights reordered into oneDNN's blocked layouts are created on the first
// call and cached per weight buffer, parameters and shapes: weights are the artifact's
// constants, whose buffers live as long as the loaded model.
#include <dlpack/dlpack.h>
#include <oneapi/dnnl/dnnl.hpp>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>

#include <oneapi/tbb/task_arena.h>

#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

dnnl::stream& stream() {
  static dnnl::stream s(engine());
  return s;
}

struct Cached {
  dnnl::primitive primitive;
  memory::desc src, dst, bias;
  memory weights;  // reordered once into the primitive's layout
  // bf16 kernels: the caller's fp32 src, and the reorder that converts it into `src` (bf16)
  memory::desc user_src;
  dnnl::reorder convert;
  // int8 (oneDNN 3.x): the per-channel scales as a run-time argument (DNNL_ARG_ATTR_SCALES |
  // DNNL_ARG_WEIGHTS), the zero points (DNNL_ARG_ATTR_ZERO_POINTS | SRC / DST), held here
  memory scales, src_zero_point, dst_zero_point;
  std::vector<float> bias_scale;  // per output channel (one value: all): int32 bias to f32 bias
  // The weight tensor itself: while it is held, its buffer cannot be freed and its address
  // reused by another model's weights (which would find this entry's reordered copy).
  tvm::ffi::Optional<tvm::ffi::Tensor> source;
};

// Per weight buffer (a model's constant: stable while the model is loaded), the primitives made
// for it with their signature (kind, parameters, shapes, dtypes): a lookup builds a few integers,
// no string, on every call.
using Signature = std::vector<int64_t>;
std::unordered_map<const void*, std::vector<std::pair<Signature, std::shared_ptr<Cached>>>>& by_weight() {
  static std::unordered_map<const void*, std::vector<std::pair<Signature, std::shared_ptr<Cached>>>> c;
  return c;
}

Signature signature_of(int64_t kind, const tvm::ffi::Shape& p, float lo, float hi,
                       std::initializer_list<const DLTensor*> tensors, int64_t extra) {
  Signature sig{kind, extra, static_cast<int64_t>(p.size())};
  sig.insert(sig.end(), p.begin(), p.end());
  int32_t bits[2];
  std::memcpy(&bits[0], &lo, 4);
  std::memcpy(&bits[1], &hi, 4);
  sig.push_back((static_cast<int64_t>(bits[0]) << 32) ^ static_cast<uint32_t>(bits[1]));
  for (const DLTensor* t : tensors) {
    sig.push_back(t->ndim * 1000 + t->dtype.code * 100 + t->dtype.bits);
    sig.insert(sig.end(), t->shape, t->shape + t->ndim);
  }
  return sig;
}

std::mutex cache_mutex;
std::unordered_map<std::string, std::shared_ptr<Cached>>& cache() {
  static std::unordered_map<std::string, std::shared_ptr<Cached>> c;
  return c;
}

// set_threads: oneDNN 3.x's TBB runtime has no thread-count setter (omp_set_num_threads in the
// OpenMP build); it splits each primitive's work by tbb::this_task_arena::max_concurrency() and
// runs it on the arena it is called in. Every call runs in `arena` when set_threads made one.
std::mutex arena_mutex;
std::shared_ptr<tbb::task_arena>& arena() {
  static std::shared_ptr<tbb::task_arena> a;
  return a;
}

void set_threads(int64_t n) {
  std::shared_ptr<tbb::task_arena> made;
  if (n > 0) {
    made = std::make_shared<tbb::task_arena>(static_cast<int>(n));  // caller + n - 1 workers
    made->initialize();
  }
  std::lock_guard<std::mutex> lock(arena_mutex);
  arena() = std::move(made);  // a call running in the old arena keeps it alive till it returns
}

// f() in the arena set_threads made (exceptions come back out of execute), else in the caller's
template <class F>
void in_arena(F&& f) {
  std::shared_ptr<tbb::task_arena> a;
  {
    std::lock_guard<std::mutex> lock(arena_mutex);
    a = arena();
  }
  if (a)
    a->execute(f);
  else
    f();
}

void check(bool ok, const std::string& what) {
  if (!ok) TVM_FFI_THROW(ValueError) << "edgeopt oneDNN plugin: " << what;
}

dt dtype_of(const DLTensor* t, const char* name) {
  check(t->device.device_type == kDLCPU, std::string(name) + " must be on the CPU");
  if (t->dtype.lanes == 1 && t->dtype.code == kDLFloat && t->dtype.bits == 32) return dt::f32;
  if (t->dtype.lanes == 1 && t->dtype.code == kDLUInt && t->dtype.bits == 8) return dt::u8;
  if (t->dtype.lanes == 1 && t->dtype.code == kDLInt && t->dtype.bits == 8) return dt::s8;
  if (t->dtype.lanes == 1 && t->dtype.code == kDLInt && t->dtype.bits == 32) return dt::s32;
  if (t->dtype.lanes == 1 && t->dtype.code == kDLBfloat && t->dtype.bits == 16) return dt::bf16;
  check(false, std::string(name) + " has an unsupported dtype");
  return dt::undef;
}

bool is_bf16(const DLTensor* t) {
  return t->dtype.code == kDLBfloat && t->dtype.bits == 16 && t->dtype.lanes == 1;
}

// bf16 kernels take bf16 activations: the primitive's src is the caller's fp32 one converted by a
// reorder into a per-thread buffer (oneDNN has no conv or matmul that mixes f32 src and bf16 weights)
void convert_src(Cached& cached, const memory::desc& user_src) {
  cached.user_src = user_src;
  if (cached.src == user_src) return;
  cached.convert = dnnl::reorder(dnnl::reorder::primitive_desc(engine(), user_src, engine(), cached.src));
}

void check_f32(const DLTensor* t, const char* name) {
  check(t->dtype.code == kDLFloat && t->dtype.bits == 32 && t->dtype.lanes == 1,
        std::string(name) + " must be float32");
  check(t->device.device_type == kDLCPU, std::string(name) + " must be on the CPU");
}

// The fields of a tensor argument (the view's shape stays owned by the caller during the call).
DLTensor tensor_arg(const tvm::ffi::PackedArgs& args, int i) {
  auto view = args[i].cast<tvm::ffi::TensorView>();
  DLTensor t{};
  t.data = view.data_ptr();
  t.device = view.device();
  t.ndim = view.ndim();
  t.dtype = view.dtype();
  t.shape = const_cast<int64_t*>(view.shape().data());
  t.byte_offset = view.byte_offset();
  return t;
}

void* data_of(const DLTensor* t) { return static_cast<char*>(t->data) + t->byte_offset; }

size_t bytes_of(const DLTensor* t) {
  size_t n = (t->dtype.bits * t->dtype.lanes + 7) / 8;
  for (int i = 0; i < t->ndim; ++i) n *= static_cast<size_t>(t->shape[i]);
  return n;
}

// A residual is oneDNN's sum post-op: dst holds it when the primitive runs, and the sum adds
// sum_scale * (dst - sum_zero_point) (int8: the residual's scale over the output's, its zero point)
dnnl::post_ops post_ops(bool residual, int64_t activation, float lo, float hi, float sum_scale = 1.0f,
                        int32_t sum_zero_point = 0, dt sum_dtype = dt::undef) {
  dnnl::post_ops ops;
  if (residual) ops.append_sum(sum_scale, sum_zero_point, sum_dtype);
  // oneDNN 3.x: append_eltwise(alg, alpha, beta), no scale argument
  if (activation == 1) ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
  if (activation == 2) ops.append_eltwise(dnnl::algorithm::eltwise_clip, lo, hi);
  if (activation == 3) ops.append_eltwise(dnnl::algorithm::eltwise_gelu_erf, 0.0f, 0.0f);
  if (activation == 4) ops.append_eltwise(dnnl::algorithm::eltwise_swish, 1.0f, 0.0f);
  // x * relu6(x + 3) / 6: 3.x reads alpha and beta as x * clip(alpha * x + beta, 0, 1)
  if (activation == 5) ops.append_eltwise(dnnl::algorithm::eltwise_hardswish, 1.0f / 6.0f, 0.5f);
  return ops;
}

std::string key_of(const char* kind, const tvm::ffi::Shape& p, float lo, float hi,
                   const std::vector<const DLTensor*>& tensors, bool residual) {
  std::ostringstream k;
  k << kind << '|' << residual << '|' << lo << '|' << hi;
  for (int64_t v : p) k << ',' << v;
  for (const DLTensor* t : tensors) {
    k << '|';
    for (int i = 0; i < t->ndim; ++i) k << t->shape[i] << 'x';
  }
  k << '@' << data_of(tensors[1]);  // the weight buffer
  return k.str();
}

memory reorder_weights(const memory::desc& user, void* data, const memory::desc& wanted) {
  memory source(user, engine(), data);
  if (user == wanted) return source;
  memory target(wanted, engine());
  dnnl::reorder(source, target).execute(stream(), source, target);
  stream().wait();
  return target;
}

std::shared_ptr<Cached> conv_primitive(const tvm::ffi::Shape& p, float lo, float hi, const DLTensor* src,
                                       const DLTensor* weight, const DLTensor* out, bool residual) {
  check(p.size() == 10, "conv2d takes 10 integer parameters");
  check(src->ndim == 4 && weight->ndim == 4 && out->ndim == 4, "conv2d takes 4-D tensors");
  const int64_t n = src->shape[0], h = src->shape[1], w = src->shape[2], c = src->shape[3];
  const int64_t o = weight->shape[0], kh = weight->shape[2], kw = weight->shape[3];
  const int64_t oh = out->shape[1], ow = out->shape[2], groups = p[8];
  check(out->shape[3] == o && c == weight->shape[1] * groups, "conv2d shapes do not agree");
  const dt type = is_bf16(weight) ? dt::bf16 : dt::f32;  // of src and weights; the rest is fp32
  memory::desc user_src({n, c, h, w}, dtype_of(src, "src"), tag::nhwc);
  memory::desc src_md({n, c, h, w}, type, tag::nhwc);
  memory::desc dst_md({n, o, oh, ow}, dtype_of(out, "out"), tag::nhwc);
  memory::desc bias_md({o}, dt::f32, tag::x);
  memory::dims wdims = groups == 1 ? memory::dims{o, c, kh, kw}
                                   : memory::dims{groups, o / groups, c / groups, kh, kw};
  memory::desc user_w(wdims, type, groups == 1 ? tag::oihw : tag::goihw);
  memory::desc any_w(wdims, type, tag::any);
  dnnl::primitive_attr attr;
  attr.set_post_ops(post_ops(residual, p[9], lo, hi));
  dnnl::convolution_forward::primitive_desc pd(
      engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src_md, any_w,
      bias_md, dst_md, {p[0], p[1]}, {p[6] - 1, p[7] - 1}, {p[2], p[3]}, {p[4], p[5]}, attr);
  auto cached = std::make_shared<Cached>();
  cached->primitive = dnnl::convolution_forward(pd);
  cached->src = src_md;
  cached->dst = dst_md;
  cached->bias = bias_md;
  cached->weights = reorder_weights(user_w, data_of(weight), pd.weights_desc());
  convert_src(*cached, user_src);
  return cached;
}

// A transposed conv (ONNX ConvTranspose) as oneDNN's deconvolution, NCHW in and out (the layout
// the model keeps it in); weight (O, I/G, KH, KW), group-major; p as conv2d's, the end paddings
// already less the output padding; no post-ops.
std::shared_ptr<Cached> deconv_primitive(const tvm::ffi::Shape& p, float lo, float hi, const DLTensor* src,
                                         const DLTensor* weight, const DLTensor* out, bool residual) {
  check(p.size() == 10, "conv2d_transpose takes 10 integer parameters");
  check(!residual && p[9] == 0, "conv2d_transpose takes no residual or activation");
  check(src->ndim == 4 && weight->ndim == 4 && out->ndim == 4, "conv2d_transpose takes 4-D tensors");
  check_f32(weight, "weight");
  const int64_t n = src->shape[0], c = src->shape[1], h = src->shape[2], w = src->shape[3];
  const int64_t o = weight->shape[0], kh = weight->shape[2], kw = weight->shape[3];
  const int64_t oh = out->shape[2], ow = out->shape[3], groups = p[8];
  check(out->shape[1] == o && c == weight->shape[1] * groups, "conv2d_transpose shapes do not agree");
  memory::desc src_md({n, c, h, w}, dt::f32, tag::nchw);
  memory::desc dst_md({n, o, oh, ow}, dt::f32, tag::nchw);
  memory::desc bias_md({o}, dt::f32, tag::x);
  memory::dims wdims = groups == 1 ? memory::dims{o, c, kh, kw}
                                   : memory::dims{groups, o / groups, c / groups, kh, kw};
  memory::desc user_w(wdims, dt::f32, groups == 1 ? tag::oihw : tag::goihw);
  memory::desc any_w(wdims, dt::f32, tag::any);
  dnnl::deconvolution_forward::primitive_desc pd(
      engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::deconvolution_direct, src_md, any_w,
      bias_md, dst_md, {p[0], p[1]}, {p[6] - 1, p[7] - 1}, {p[2], p[3]}, {p[4], p[5]});
  auto cached = std::make_shared<Cached>();
  cached->primitive = dnnl::deconvolution_forward(pd);
  cached->src = src_md;
  cached->dst = dst_md;
  cached->bias = bias_md;
  cached->weights = reorder_weights(user_w, data_of(weight), pd.weights_desc());
  convert_src(*cached, src_md);
  return cached;
}

std::shared_ptr<Cached> matmul_primitive(const tvm::ffi::Shape& p, float lo, float hi, const DLTensor* src,
                                         const DLTensor* weight, const DLTensor* out, bool residual) {
  check(p.size() == 1, "matmul takes 1 integer parameter");
  check(weight->ndim == 2 && src->ndim >= 2, "matmul takes (..., K) x (K, N)");
  int64_t m = 1;
  for (int i = 0; i < src->ndim - 1; ++i) m *= src->shape[i];
  const int64_t k = src->shape[src->ndim - 1], nn = weight->shape[1];
  check(weight->shape[0] == k && out->shape[out->ndim - 1] == nn, "matmul shapes do not agree");
  const dt type = is_bf16(weight) ? dt::bf16 : dt::f32;  // of src and weights; the rest is fp32
  memory::desc user_src({m, k}, dtype_of(src, "src"), tag::ab);
  memory::desc src_md({m, k}, type, tag::ab);
  memory::desc dst_md({m, nn}, dtype_of(out, "out"), tag::ab);
  memory::desc bias_md({1, nn}, dt::f32, tag::ab);
  memory::desc user_w({k, nn}, type, tag::ab);
  memory::desc any_w({k, nn}, type, tag::any);
  dnnl::primitive_attr attr;
  attr.set_post_ops(post_ops(residual, p[0], lo, hi));
  dnnl::matmul::primitive_desc pd(engine(), src_md, any_w, bias_md, dst_md, attr);
  auto cached = std::make_shared<Cached>();
  cached->primitive = dnnl::matmul(pd);
  cached->src = src_md;
  cached->dst = dst_md;
  cached->bias = bias_md;
  cached->weights = reorder_weights(user_w, data_of(weight), pd.weights_desc());
  convert_src(*cached, user_src);
  return cached;
}

// int8: (p, lo, hi, src, weight, bias, scales, out); p ends with the src and out zero points.
//
// oneDNN 2.x computed dst = zp_dst + post_ops(oscale * (acc + bias_s32)), oscale = the caller's
// per-channel `scales` (src_scale * weight_scale / out_scale), acc = sum((src - zp_src) * weight).
// oneDNN 3.x has no output scales: dst = zp_dst + post_ops(wei_scale * src_scale * acc + bias) / dst_scale,
// the bias an f32 value added after scaling. The same function with the same arguments: the whole
// `scales` vector as the weights' scales (no src or dst scale), and the bias converted per call to
// f32 output units, bias_s32 * scales[c]; the post-ops then still see output units (lo, hi).
// (f32 rounding: scales[c] * acc + scales[c] * bias against scales[c] * (acc + bias): an output
// lying on a rounding midpoint may move by one step.)
// An int8 residual: its scale over the output's, and its dtype (p's third zero point is its own).
struct QuantResidual {
  float scale = 0.0f;
  dt dtype = dt::undef;
};

dnnl::primitive_attr quant_attr(const tvm::ffi::Shape& p, size_t n_params, int64_t activation, float lo, float hi,
                                const DLTensor* scales, int scale_mask, Cached& cached, const QuantResidual& residual) {
  const bool joined = residual.dtype != dt::undef;
  check(p.size() == n_params + (joined ? 3 : 2),
        "int8 kernels take their parameters plus two zero points (three with a residual)");
  dnnl::primitive_attr attr;
  const float* s = static_cast<const float*>(data_of(scales));
  cached.bias_scale.assign(s, s + scales->shape[0]);
  const int64_t count = static_cast<int64_t>(cached.bias_scale.size());
  attr.set_scales_mask(DNNL_ARG_WEIGHTS, count == 1 ? 0 : scale_mask);
  cached.scales = memory(memory::desc({count}, dt::f32, tag::x), engine());
  std::memcpy(cached.scales.get_data_handle(), s, count * sizeof(float));
  auto zero_point = [&](int arg, int64_t value, memory& held) {
    if (value == 0) return;
    attr.set_zero_points_mask(arg, 0);
    held = memory(memory::desc({1}, dt::s32, tag::x), engine());
    *static_cast<int32_t*>(held.get_data_handle()) = static_cast<int32_t>(value);
  };
  zero_point(DNNL_ARG_SRC, p[n_params], cached.src_zero_point);
  zero_point(DNNL_ARG_DST, p[n_params + 1], cached.dst_zero_point);
  attr.set_post_ops(post_ops(joined, activation, lo, hi, residual.scale,
                             joined ? static_cast<int32_t>(p[n_params + 2]) : 0, residual.dtype));
  return attr;
}

std::shared_ptr<Cached> conv_q_primitive(const tvm::ffi::Shape& p, float lo, float hi, const DLTensor* src,
                                         const DLTensor* weight, const DLTensor* out, const DLTensor* scales,
                                         const QuantResidual& residual) {
  check(src->ndim == 4 && weight->ndim == 4 && out->ndim == 4, "conv2d_q takes 4-D tensors");
  const int64_t n = src->shape[0], h = src->shape[1], w = src->shape[2], c = src->shape[3];
  const int64_t o = weight->shape[0], kh = weight->shape[2], kw = weight->shape[3];
  const int64_t oh = out->shape[1], ow = out->shape[2], groups = p[8];
  check(out->shape[3] == o && c == weight->shape[1] * groups, "conv2d_q shapes do not agree");
  memory::desc src_md({n, c, h, w}, dtype_of(src, "src"), tag::nhwc);
  memory::desc dst_md({n, o, oh, ow}, dtype_of(out, "out"), tag::nhwc);
  memory::desc bias_md({o}, dt::f32, tag::x);  // 3.x: f32 bias in output units (run_q converts)
  memory::dims wdims = groups == 1 ? memory::dims{o, c, kh, kw}
                                   : memory::dims{groups, o / groups, c / groups, kh, kw};
  memory::desc user_w(wdims, dt::s8, groups == 1 ? tag::oihw : tag::goihw);
  memory::desc any_w(wdims, dt::s8, tag::any);
  auto cached = std::make_shared<Cached>();
  // weights' scales per output channel: dim 0 of OIHW, dims 0 and 1 (G, O/G) of GOIHW
  dnnl::primitive_attr attr = quant_attr(p, 10, p[9], lo, hi, scales, groups == 1 ? 1 << 0 : (1 << 0) | (1 << 1),
                                         *cached, residual);
  dnnl::convolution_forward::primitive_desc pd(
      engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src_md, any_w,
      bias_md, dst_md, {p[0], p[1]}, {p[6] - 1, p[7] - 1}, {p[2], p[3]}, {p[4], p[5]}, attr);
  cached->primitive = dnnl::convolution_forward(pd);
  cached->src = src_md;
  cached->dst = dst_md;
  cached->bias = bias_md;
  cached->weights = reorder_weights(user_w, data_of(weight), pd.weights_desc());
  return cached;
}

std::shared_ptr<Cached> matmul_q_primitive(const tvm::ffi::Shape& p, float lo, float hi, const DLTensor* src,
                                           const DLTensor* weight, const DLTensor* out, const DLTensor* scales,
                                           const QuantResidual& residual) {
  check(weight->ndim == 2 && src->ndim >= 2, "matmul_q takes (..., K) x (K, N)");
  check(residual.dtype == dt::undef, "matmul_q takes no residual");
  int64_t m = 1;
  for (int i = 0; i < src->ndim - 1; ++i) m *= src->shape[i];
  const int64_t k = src->shape[src->ndim - 1], nn = weight->shape[1];
  check(weight->shape[0] == k && out->shape[out->ndim - 1] == nn, "matmul_q shapes do not agree");
  memory::desc src_md({m, k}, dtype_of(src, "src"), tag::ab);
  memory::desc dst_md({m, nn}, dtype_of(out, "out"), tag::ab);
  memory::desc bias_md({1, nn}, dt::f32, tag::ab);  // 3.x: f32 bias in output units (run_q converts)
  memory::desc user_w({k, nn}, dt::s8, tag::ab);
  memory::desc any_w({k, nn}, dt::s8, tag::any);
  auto cached = std::make_shared<Cached>();
  // weights (K, N): per output channel is dim 1
  dnnl::primitive_attr attr = quant_attr(p, 1, p[0], lo, hi, scales, 1 << 1, *cached, residual);
  dnnl::matmul::primitive_desc pd(engine(), src_md, any_w, bias_md, dst_md, attr);
  cached->primitive = dnnl::matmul(pd);
  cached->src = src_md;
  cached->dst = dst_md;
  cached->bias = bias_md;
  cached->weights = reorder_weights(user_w, data_of(weight), pd.weights_desc());
  return cached;
}

using QuantFactory = std::shared_ptr<Cached> (*)(const tvm::ffi::Shape&, float, float, const DLTensor*,
                                                 const DLTensor*, const DLTensor*, const DLTensor*,
                                                 const QuantResidual&);

// (p, lo, hi, src, weight, bias, scales, [residual, residual_scale,] out)
void run_q(const char* kind, QuantFactory factory, tvm::ffi::PackedArgs args) {
  check(args.size() == 8 || args.size() == 10, std::string(kind) + " takes 8 arguments, or 10 with a residual");
  const bool joined = args.size() == 10;
  auto p = args[0].cast<tvm::ffi::Shape>();
  float lo = static_cast<float>(args[1].cast<double>()), hi = static_cast<float>(args[2].cast<double>());
  const DLTensor src_t = tensor_arg(args, 3), weight_t = tensor_arg(args, 4), bias_t = tensor_arg(args, 5);
  const DLTensor scales_t = tensor_arg(args, 6);
  const DLTensor res_t = joined ? tensor_arg(args, 7) : DLTensor{};
  DLTensor out_t = tensor_arg(args, joined ? 9 : 7);
  QuantResidual residual;
  if (joined) {
    residual.scale = static_cast<float>(args[8].cast<double>());
    residual.dtype = dtype_of(&res_t, "residual");
    check(residual.dtype == dt::u8 || residual.dtype == dt::s8, "an int8 residual is uint8 or int8");
    check(bytes_of(&res_t) == bytes_of(&out_t), "residual and output differ in size");
  }
  check(dtype_of(&weight_t, "weight") == dt::s8, "weight must be int8");
  check(dtype_of(&bias_t, "bias") == dt::s32, "bias must be int32");
  check(dtype_of(&scales_t, "scales") == dt::f32 && scales_t.ndim == 1, "scales must be a float32 vector");
  std::shared_ptr<Cached> cached;
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    Signature sig = signature_of(kind[0] == 'c' ? 3 : 4, p, lo, hi, {&src_t, &weight_t, &out_t},
                                 static_cast<int64_t>(reinterpret_cast<uintptr_t>(data_of(&scales_t))));
    if (joined) {  // (p holds the residual's zero point)
      int32_t scale_bits;
      std::memcpy(&scale_bits, &residual.scale, sizeof(scale_bits));
      sig.push_back(scale_bits);
      sig.push_back(static_cast<int64_t>(residual.dtype));
    }
    auto& entries = by_weight()[data_of(&weight_t)];
    for (auto& entry : entries)
      if (entry.first == sig) cached = entry.second;
    if (!cached) {
      try {
        cached = factory(p, lo, hi, &src_t, &weight_t, &out_t, &scales_t, residual);
      } catch (const dnnl::error& e) {
        TVM_FFI_THROW(RuntimeError) << "edgeopt oneDNN plugin: no " << kind << " primitive for "
                                    << key_of(kind, p, lo, hi, {&src_t, &weight_t, &out_t}, false)
                                    << ": " << e.what();
      }
      cached->source = args[4].try_cast<tvm::ffi::Tensor>();
      entries.emplace_back(std::move(sig), cached);
    }
  }
  // the int32 bias (accumulator units) as oneDNN 3.x's f32 bias (output units), per call: the
  // bias stays an ordinary argument (no assumption that it is a constant)
  const int64_t channels = static_cast<int64_t>(cached->bias.get_size() / sizeof(float));
  check(bytes_of(&bias_t) == channels * sizeof(int32_t), "bias has one value per output channel");
  thread_local std::vector<float> bias_f32;
  bias_f32.resize(channels);
  const int32_t* b = static_cast<const int32_t*>(data_of(&bias_t));
  const std::vector<float>& bs = cached->bias_scale;
  if (bs.size() == 1)
    for (int64_t i = 0; i < channels; ++i) bias_f32[i] = static_cast<float>(b[i]) * bs[0];
  else
    for (int64_t i = 0; i < channels; ++i) bias_f32[i] = static_cast<float>(b[i]) * bs[i];
  memory src_mem(cached->src, engine(), data_of(&src_t));
  memory dst_mem(cached->dst, engine(), data_of(&out_t));
  memory bias_mem(cached->bias, engine(), bias_f32.data());
  std::unordered_map<int, memory> exec_args{{DNNL_ARG_SRC, src_mem},
                                            {DNNL_ARG_WEIGHTS, cached->weights},
                                            {DNNL_ARG_BIAS, bias_mem},
                                            {DNNL_ARG_DST, dst_mem},
                                            {DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS, cached->scales}};
  if (cached->src_zero_point) exec_args.emplace(DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC, cached->src_zero_point);
  if (cached->dst_zero_point) exec_args.emplace(DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_DST, cached->dst_zero_point);
  if (joined && data_of(&res_t) != data_of(&out_t))  // the sum post-op reads the residual from dst
    std::memcpy(data_of(&out_t), data_of(&res_t), bytes_of(&out_t));
  cached->primitive.execute(stream(), exec_args);
  stream().wait();
}

void batch_matmul(tvm::ffi::PackedArgs args) {
  check(args.size() == 3, "batch_matmul takes 3 arguments");
  const DLTensor a = tensor_arg(args, 0), b = tensor_arg(args, 1);
  DLTensor out = tensor_arg(args, 2);
  check_f32(&a, "a");
  check_f32(&b, "b");
  check_f32(&out, "out");
  check(a.ndim >= 3 && b.ndim == a.ndim && out.ndim == a.ndim, "batch_matmul takes equal-rank tensors");
  int64_t batch = 1;
  for (int i = 0; i < a.ndim - 2; ++i) {
    check(a.shape[i] == b.shape[i], "batch_matmul needs equal batch dimensions");
    batch *= a.shape[i];
  }
  const int64_t m = a.shape[a.ndim - 2], k = a.shape[a.ndim - 1], n = b.shape[b.ndim - 1];
  check(b.shape[b.ndim - 2] == k, "batch_matmul shapes do not agree");
  memory::desc a_md({batch, m, k}, dt::f32, tag::abc), b_md({batch, k, n}, dt::f32, tag::abc);
  memory::desc c_md({batch, m, n}, dt::f32, tag::abc);
  std::shared_ptr<Cached> cached;
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    std::string key = "bmm|" + std::to_string(batch) + "x" + std::to_string(m) + "x" + std::to_string(k) +
                      "x" + std::to_string(n);
    auto found = cache().find(key);
    if (found == cache().end()) {
      dnnl::matmul::primitive_desc pd(engine(), a_md, b_md, c_md);
      cached = std::make_shared<Cached>();
      cached->primitive = dnnl::matmul(pd);
      cache().emplace(key, cached);
    } else {
      cached = found->second;
    }
  }
  memory a_mem(a_md, engine(), data_of(&a)), b_mem(b_md, engine(), data_of(&b));
  memory c_mem(c_md, engine(), data_of(&out));
  cached->primitive.execute(stream(), {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, c_mem}});
  stream().wait();
}

// (rows, last) of a tensor: oneDNN sees every leading axis as one
std::pair<int64_t, int64_t> rows_and_last(const DLTensor& t) {
  int64_t rows = 1;
  for (int i = 0; i < t.ndim - 1; ++i) rows *= t.shape[i];
  return {rows, t.shape[t.ndim - 1]};
}

std::shared_ptr<Cached> cached_or(const std::string& key, const std::function<std::shared_ptr<Cached>()>& make) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto found = cache().find(key);
  if (found != cache().end()) return found->second;
  auto made = make();
  cache().emplace(key, made);
  return made;
}

void layer_norm(tvm::ffi::PackedArgs args) {
  check(args.size() == 5, "layer_norm takes 5 arguments");
  const float eps = static_cast<float>(args[0].cast<double>());
  const DLTensor src = tensor_arg(args, 1), gamma = tensor_arg(args, 2), beta = tensor_arg(args, 3);
  DLTensor out = tensor_arg(args, 4);
  for (const DLTensor* t : std::initializer_list<const DLTensor*>{&src, &gamma, &beta, &out})
    check_f32(t, "layer_norm operand");
  auto [rows, last] = rows_and_last(src);
  memory::desc md({rows, last}, dt::f32, tag::ab), cmd({last}, dt::f32, tag::x);
  auto cached = cached_or("ln|" + std::to_string(rows) + "x" + std::to_string(last) + "|" + std::to_string(eps), [&] {
    dnnl::layer_normalization_forward::primitive_desc pd(engine(), dnnl::prop_kind::forward_inference, md, md, eps,
                                                         dnnl::normalization_flags::use_scale |
                                                             dnnl::normalization_flags::use_shift);
    auto c = std::make_shared<Cached>();
    c->primitive = dnnl::layer_normalization_forward(pd);
    return c;
  });
  memory s(md, engine(), data_of(&src)), d(md, engine(), data_of(&out));
  memory g(cmd, engine(), data_of(&gamma)), b(cmd, engine(), data_of(&beta));
  cached->primitive.execute(stream(), {{DNNL_ARG_SRC, s}, {DNNL_ARG_DST, d}, {DNNL_ARG_SCALE, g}, {DNNL_ARG_SHIFT, b}});
  stream().wait();
}

void softmax(tvm::ffi::PackedArgs args) {
  check(args.size() == 2, "softmax takes 2 arguments");
  const DLTensor src = tensor_arg(args, 0);
  DLTensor out = tensor_arg(args, 1);
  check_f32(&src, "src");
  check_f32(&out, "out");
  auto [rows, last] = rows_and_last(src);
  memory::desc md({rows, last}, dt::f32, tag::ab);
  auto cached = cached_or("softmax|" + std::to_string(rows) + "x" + std::to_string(last), [&] {
    dnnl::softmax_forward::primitive_desc pd(engine(), dnnl::prop_kind::forward_inference,
                                             dnnl::algorithm::softmax_accurate, md, md, 1);
    auto c = std::make_shared<Cached>();
    c->primitive = dnnl::softmax_forward(pd);
    return c;
  });
  memory s(md, engine(), data_of(&src)), d(md, engine(), data_of(&out));
  cached->primitive.execute(stream(), {{DNNL_ARG_SRC, s}, {DNNL_ARG_DST, d}});
  stream().wait();
}

void max_pool2d(tvm::ffi::PackedArgs args) {
  check(args.size() == 3, "max_pool2d takes 3 arguments");
  auto p = args[0].cast<tvm::ffi::Shape>();
  check(p.size() == 6, "max_pool2d takes 6 parameters");
  const DLTensor src = tensor_arg(args, 1);
  DLTensor out = tensor_arg(args, 2);
  check(src.ndim == 4 && out.ndim == 4 && src.shape[0] == out.shape[0] && src.shape[3] == out.shape[3],
        "max_pool2d takes NHWC tensors with equal batch and channels");
  const dt type = dtype_of(&src, "src");
  check(dtype_of(&out, "out") == type, "max_pool2d's output has its input's dtype");
  const int64_t n = src.shape[0], h = src.shape[1], w = src.shape[2], c = src.shape[3];
  const int64_t oh = out.shape[1], ow = out.shape[2];
  const int64_t pad_b = (oh - 1) * p[2] + p[0] - h - p[4], pad_r = (ow - 1) * p[3] + p[1] - w - p[5];
  std::string key = "maxpool|" + std::to_string(static_cast<int>(type));
  for (int64_t v : {n, h, w, c, oh, ow, p[0], p[1], p[2], p[3], p[4], p[5]}) key += "|" + std::to_string(v);
  memory::desc src_md({n, c, h, w}, type, tag::nhwc), dst_md({n, c, oh, ow}, type, tag::nhwc);
  auto cached = cached_or(key, [&] {
    dnnl::pooling_forward::primitive_desc pd(engine(), dnnl::prop_kind::forward_inference,
                                             dnnl::algorithm::pooling_max, src_md, dst_md, {p[2], p[3]},
                                             {p[0], p[1]}, {0, 0}, {p[4], p[5]}, {pad_b, pad_r});
    auto made = std::make_shared<Cached>();
    made->primitive = dnnl::pooling_forward(pd);
    return made;
  });
  memory s_mem(src_md, engine(), data_of(&src)), d_mem(dst_md, engine(), data_of(&out));
  cached->primitive.execute(stream(), {{DNNL_ARG_SRC, s_mem}, {DNNL_ARG_DST, d_mem}});
  stream().wait();
}

using Factory = std::shared_ptr<Cached> (*)(const tvm::ffi::Shape&, float, float, const DLTensor*,
                                            const DLTensor*, const DLTensor*, bool);

// (p, lo, hi, src, weight, bias, [residual,] out)
void run(const char* kind, Factory factory, tvm::ffi::PackedArgs args) {
  check(args.size() == 7 || args.size() == 8, std::string(kind) + " takes 7 or 8 arguments");
  auto p = args[0].cast<tvm::ffi::Shape>();
  float lo = static_cast<float>(args[1].cast<double>()), hi = static_cast<float>(args[2].cast<double>());
  const bool residual = args.size() == 8;
  const DLTensor src_t = tensor_arg(args, 3), weight_t = tensor_arg(args, 4), bias_t = tensor_arg(args, 5);
  const DLTensor res_t = residual ? tensor_arg(args, 6) : DLTensor{};
  DLTensor out_t = tensor_arg(args, args.size() - 1);
  const DLTensor *src = &src_t, *weight = &weight_t, *bias = &bias_t, *res = &res_t;
  DLTensor* out = &out_t;
  check(is_bf16(weight) || (weight->dtype.code == kDLFloat && weight->dtype.bits == 32 && weight->dtype.lanes == 1),
        "weight must be float32 or bfloat16");
  check(weight->device.device_type == kDLCPU, "weight must be on the CPU");
  if (is_bf16(weight)) {  // bf16 kernels: a bf16 src or out is a neighbouring bf16 call's
    check((is_bf16(src) || dtype_of(src, "src") == dt::f32) && (is_bf16(out) || dtype_of(out, "out") == dt::f32),
          "a bf16 kernel's src and out are float32 or bfloat16");
    check(!residual || !is_bf16(out), "a bf16 kernel with a residual writes float32");
  } else {
    check_f32(src, "src");
    check_f32(out, "out");
  }
  check_f32(bias, "bias");
  std::shared_ptr<Cached> cached;
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    const int64_t code = factory == conv_primitive ? 1 : factory == matmul_primitive ? 2 : 5;
    Signature sig = signature_of(code, p, lo, hi, {src, weight, out}, residual);
    auto& entries = by_weight()[data_of(weight)];
    for (auto& entry : entries)
      if (entry.first == sig) cached = entry.second;
    if (!cached) {
      try {
        cached = factory(p, lo, hi, src, weight, out, residual);
      } catch (const dnnl::error& e) {
        TVM_FFI_THROW(RuntimeError) << "edgeopt oneDNN plugin: no " << kind << " primitive for "
                                    << key_of(kind, p, lo, hi, {src, weight, out}, residual) << ": " << e.what();
      }
      cached->source = args[4].try_cast<tvm::ffi::Tensor>();
      entries.emplace_back(std::move(sig), cached);
    }
  }
  if (residual) {
    check_f32(res, "residual");
    check(bytes_of(res) == bytes_of(out), "residual and output differ in size");
    if (data_of(res) != data_of(out)) std::memcpy(data_of(out), data_of(res), bytes_of(out));
  }
  memory src_mem(cached->user_src, engine(), data_of(src));
  if (cached->convert) {
    // grown to the largest src this thread converts; one buffer per thread keeps concurrent
    // calls (two runners of one model) apart
    thread_local std::vector<char> converted;
    if (converted.size() < cached->src.get_size()) converted.resize(cached->src.get_size());
    memory bf16_src(cached->src, engine(), converted.data());
    cached->convert.execute(stream(), src_mem, bf16_src);
    src_mem = bf16_src;
  }
  memory dst_mem(cached->dst, engine(), data_of(out));
  memory bias_mem(cached->bias, engine(), data_of(bias));
  cached->primitive.execute(stream(), {{DNNL_ARG_SRC, src_mem},
                                       {DNNL_ARG_WEIGHTS, cached->weights},
                                       {DNNL_ARG_BIAS, bias_mem},
                                       {DNNL_ARG_DST, dst_mem}});
  stream().wait();
}

}  // namespace

constexpr int64_t kVersion = 4;  // 2: bf16 weights for conv2d and matmul; 3: swish, hardswish, conv2d_transpose;
                                  // 4: conv2d_q with a residual

// This copy's version (the registered edgeopt.onednn.version is the first copy loaded, which
// serves every artifact of the process): a runner refuses an artifact whose copy is newer than
// the one serving, instead of calling a function or a code that one does not know.
extern "C" int64_t edgeopt_onednn_plugin_version() { return kVersion; }

TVM_FFI_STATIC_INIT_BLOCK() {
  // Two artifacts may each carry a copy of this library: the first copy loaded serves both.
  if (tvm::ffi::Function::GetGlobal("edgeopt.onednn.version").has_value()) return;
  tvm::ffi::reflection::GlobalDef()
      .def("edgeopt.onednn.version", []() { return kVersion; })
      .def("edgeopt.onednn.clear_cache",
           []() {
             // every primitive and held weight: a model loaded later makes its own again
             std::lock_guard<std::mutex> lock(cache_mutex);
             by_weight().clear();
             cache().clear();
           })
      .def("edgeopt.onednn.set_threads", [](int64_t n) { set_threads(n); })
      .def_packed("edgeopt.onednn.conv2d",
                  [](tvm::ffi::PackedArgs args, tvm::ffi::Any*) { in_arena([&] { run("conv2d", conv_primitive, args); }); })
      .def_packed("edgeopt.onednn.conv2d_transpose",
                  [](tvm::ffi::PackedArgs args, tvm::ffi::Any*) { in_arena([&] { run("conv2d_transpose", deconv_primitive, args); }); })
      .def_packed("edgeopt.onednn.matmul",
                  [](tvm::ffi::PackedArgs args, tvm::ffi::Any*) { in_arena([&] { run("matmul", matmul_primitive, args); }); })
      .def_packed("edgeopt.onednn.layer_norm",
                  [](tvm::ffi::PackedArgs args, tvm::ffi::Any*) { in_arena([&] { layer_norm(args); }); })
      .def_packed("edgeopt.onednn.softmax",
                  [](tvm::ffi::PackedArgs args, tvm::ffi::Any*) { in_arena([&] { softmax(args); }); })
      .def_packed("edgeopt.onednn.max_pool2d",
                  [](tvm::ffi::PackedArgs args, tvm::ffi::Any*) { in_arena([&] { max_pool2d(args); }); })
      .def_packed("edgeopt.onednn.batch_matmul",
                  [](tvm::ffi::PackedArgs args, tvm::ffi::Any*) { in_arena([&] { batch_matmul(args); }); })
      .def_packed("edgeopt.onednn.conv2d_q",
                  [](tvm::ffi::PackedArgs args, tvm::ffi::Any*) { in_arena([&] { run_q("conv2d_q", conv_q_primitive, args); }); })
      .def_packed("edgeopt.onednn.matmul_q",
                  [](tvm::ffi::PackedArgs args, tvm::ffi::Any*) { in_arena([&] { run_q("matmul_q", matmul_q_primitive, args); }); });
}
