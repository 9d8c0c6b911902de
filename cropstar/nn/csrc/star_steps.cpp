// The step loops of the fused dense STAR layer (cropstar/nn/fused_star.py), forward and backward through
// time, in C++, on the same buffers as the Python loops they replace (fused_star._forward_steps,
// fused_star._backward_steps: the reference), without the Python interpreter between the calls. In
// float64 they make the same ATen calls in the same order (the same numbers); in float32 each step's
// element-wise work is one loop, forward (star_train_update) and backward (train_backward_steps), so the
// rounding differs slightly from ATen's. Paper eq. 10-12; dense layers on CPU only.
// Compiled at first use by cropstar/nn/star_steps.py (torch.utils.cpp_extension.load).
// Also the inference step loop of cropstar/nn/fast_star.py (inference_steps): its element-wise work fused
// into one loop over raw float32 values, so its rounding differs slightly from ATen's (about 1e-7).

#include <torch/extension.h>

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

namespace {

// tanh in place as 2 sigma(2x) - 1, as cropstar.nn.fast_star.tanh_ computes it on CPU.
at::Tensor& tanh_by_sigmoid_(at::Tensor& t) {
  return t.mul_(2).sigmoid_().mul_(2).sub_(1);
}

// Per step, the sequences (rows) a (T, B) bool mask hides; an undefined tensor where it hides none.
std::vector<at::Tensor> hidden_rows(const at::Tensor& mask) {
  const at::Tensor hidden = mask.logical_not();
  const at::Tensor counts = hidden.sum(1).to(at::kCPU, at::kLong).contiguous();
  const at::Tensor rows = at::nonzero(hidden).select(1, 1);  // in step order
  const int64_t* count = counts.data_ptr<int64_t>();
  std::vector<at::Tensor> per_step(counts.numel());
  for (int64_t t = 0, start = 0; t < counts.numel(); start += count[t], ++t) {
    if (count[t] > 0) {
      per_step[t] = rows.narrow(0, start, count[t]);
    }
  }
  return per_step;
}

void check_dense_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "star_steps: ", name, " must be on the CPU, found ", t.device());
}


// Plain loops the compiler vectorises at -O3; on x86-64 with GCC, also built for AVX2 + FMA (x86-64-v3), picked at
// load time where the CPU has them. Not for AVX-512: with two classify threads running it, the cores slowed
// (model alone 32% of the matrix-product bound against 43% with the ATen loop; AVX2: 44%).
// (GCC if-converts the clamp's comparisons, and so vectorises the loop, only without trapping math.)
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define STAR_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#else
#define STAR_VECTOR_CLONES
#endif

// exp(x) for float32 in branch-free arithmetic (Cephes' expf: x = n ln 2 + r, a degree-6 polynomial in r,
// 2^n from the exponent bits), within 2 ulp of std::exp on [-87, 88], clamped outside; inlined into the
// loops below so they vectorise (std::exp does not).
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  constexpr float round_shift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float shifted = x * 1.44269504088896341f + round_shift;
  const float n = shifted - round_shift;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  std::int32_t n_bits;
  std::memcpy(&n_bits, &shifted, sizeof n_bits);
  const std::int32_t scale_bits = (n_bits - 0x4B400000 + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return p * scale;
}

inline float sigmoid_approx(float x) {
  return 1.0f / (1.0f + exp_approx(-x));
}

// The element-wise part of one STAR step over `count` values, in one pass (eq. 11-12):
//   k = sigma(gate_input), n = h + k (z - h), new = tanh(n) = 2 sigma(2n) - 1  written over z.
// gate_input = a + W_h h, the recurrent product already added.
STAR_VECTOR_CLONES
void star_update(const float* __restrict gate_input, const float* __restrict h, float* __restrict z,
                 int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    const float k = sigmoid_approx(gate_input[i]);                 // eq. 11
    const float n = h[i] + k * (z[i] - h[i]);                       // eq. 12, inside the tanh
    z[i] = 2.0f * sigmoid_approx(2.0f * n) - 1.0f;                  // tanh(n)
  }
}

// The same step for training, keeping what the backward reads: k written over the gate input (eq. 11),
// h_t = tanh(h + k (z - h)) into n (eq. 12).
STAR_VECTOR_CLONES
void star_train_update(float* __restrict gate, const float* __restrict h, const float* __restrict z,
                       float* __restrict n, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    const float k = sigmoid_approx(gate[i]);                       // eq. 11
    gate[i] = k;
    n[i] = 2.0f * sigmoid_approx(2.0f * (h[i] + k * (z[i] - h[i]))) - 1.0f;  // eq. 12
  }
}

// One step of the backward for `count` values of one sequence, in one pass: with g = dL/dh_t (the carried
// gradient on entry, grad_output added here), n = h_t, h = h_{t-1}, and k, z of the step,
//   dp = g (1 - n^2),  du = dp k (1 - z^2)  (eq. 10),  da = dp (z - h) k (1 - k)  (eq. 11)
// into du and da, and dp (1 - k) written over g (the carried gradient before the product da W_h).
STAR_VECTOR_CLONES
void star_train_backward(float* __restrict g, const float* __restrict grad_output, const float* __restrict n,
                         const float* __restrict h, const float* __restrict z, const float* __restrict k,
                         float* __restrict du, float* __restrict da, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    const float dp = (g[i] + grad_output[i]) * (1.0f - n[i] * n[i]);  // through the tanh of eq. 12
    const float dk = dp * (z[i] - h[i]);                                // eq. 12: h + k (z - h)
    du[i] = dp * k[i] * (1.0f - z[i] * z[i]);                           // through z = tanh(u), eq. 10
    da[i] = dk * k[i] * (1.0f - k[i]);                                  // through k = sigma(a), eq. 11
    g[i] = dp * (1.0f - k[i]);                                          // to h_{t-1}, directly
  }
}

// A masked step: h_t = h_{t-1}, so g = dL/dh_t passes straight to h_{t-1}, and the step's inputs get nothing.
STAR_VECTOR_CLONES
void star_masked_backward(float* __restrict g, const float* __restrict grad_output, float* __restrict du,
                          float* __restrict da, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    g[i] += grad_output[i];
    du[i] = 0.0f;
    da[i] = 0.0f;
  }
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC pop_options
#endif

}  // namespace

// Forward through time, eq. 11-12, in place:
//   k_t = sigma(a_t + h_{t-1} W_h^T)                      into gates[t]
//   h_t = tanh(h_{t-1} + k_t (z_t - h_{t-1}))             into states[t + 1],
//   and on the rows mask[t] hides, h_t = h_{t-1} (copied)
// z (T, B, H) = tanh(u), gates (T, B, H) = a on entry, states (T + 1, B, H) with h_0 in states[0],
// W_h (H, H), mask (T, B) bool or None.
void forward_steps(const at::Tensor& z, const at::Tensor& gates, const at::Tensor& states, const at::Tensor& W_h,
                   const std::optional<at::Tensor>& mask) {
  for (const auto& [t, name] : {std::pair{&z, "z"}, {&gates, "gates"}, {&states, "states"}}) {
    check_dense_cpu(*t, name);
    TORCH_CHECK(t->dim() == 3, "star_steps: ", name, " must be (T, B, H), found ", t->dim(), " dims");
  }
  const int64_t steps = z.size(0);
  const at::Tensor W_h_t = W_h.t();
  const std::vector<at::Tensor> hidden = mask ? hidden_rows(*mask) : std::vector<at::Tensor>(steps);
  const bool fused = z.scalar_type() == at::kFloat && gates.is_contiguous() && states.is_contiguous() &&
                     z.is_contiguous();
  for (int64_t t = 0; t < steps; ++t) {
    const at::Tensor h = states.select(0, t);
    at::Tensor k = gates.select(0, t);
    at::Tensor n = states.select(0, t + 1);
    k.addmm_(h, W_h_t);  // eq. 11, inside the sigma: a + W_h h
    const at::Tensor z_t = z.select(0, t);
    if (fused) {  // float32: the element-wise work in one pass
      star_train_update(k.mutable_data_ptr<float>(), h.const_data_ptr<float>(), z_t.const_data_ptr<float>(),
                        n.mutable_data_ptr<float>(), k.numel());
    } else {
      k.sigmoid_();                    // eq. 11: k = sigma(a + W_h h)
      at::lerp_out(n, h, z_t, k);      // eq. 12: tanh(h + k (z - h))
      tanh_by_sigmoid_(n);
    }
    if (hidden[t].defined()) {
      n.index_copy_(0, hidden[t], h.index_select(0, hidden[t]));  // a masked step keeps h
    }
  }
}

// Backward through time: walks t = T-1 .. 0 with g = dL/dh_t and returns dL/dh_0, scaling in place
//   grad_z[t] = (1 - n_t^2) [observed]  into  dp_t = g (1 - n_t^2)
//   grad_a[t] = (z_t - h_{t-1}) k_t (1 - k_t)  into  da_t = dp_t (z_t - h_{t-1}) k_t (1 - k_t)
// and carrying g_{t-1} = grad_outputs[t-1] + dp_t (1 - k_t) + da_t W_h (+ g kept[t] on masked rows).
// grad_outputs, grad_z, grad_a, gates (T, B, H); W_h (H, H); kept (T, B, 1): 1 on masked rows, or None.
at::Tensor backward_steps(const at::Tensor& grad_outputs, const at::Tensor& grad_z, const at::Tensor& grad_a,
                          const at::Tensor& gates, const at::Tensor& W_h, const std::optional<at::Tensor>& kept) {
  for (const auto& [t, name] : {std::pair{&grad_outputs, "grad_outputs"}, {&grad_z, "grad_z"},
                                {&grad_a, "grad_a"}, {&gates, "gates"}}) {
    check_dense_cpu(*t, name);
    TORCH_CHECK(t->dim() == 3, "star_steps: ", name, " must be (T, B, H), found ", t->dim(), " dims");
  }
  const int64_t steps = grad_outputs.size(0);
  at::Tensor g = at::empty({grad_z.size(1), grad_z.size(2)}, grad_z.options());
  at::Tensor carried = at::empty_like(g);
  g.copy_(grad_outputs.select(0, steps - 1));  // dL/dh_T
  for (int64_t t = steps - 1; t >= 0; --t) {
    if (t < steps - 1) {
      g.add_(grad_outputs.select(0, t));  // dL/dh_t: through the output and through step t + 1
    }
    at::Tensor dp = grad_z.select(0, t).mul_(g);   // dp = dn (1 - n^2)
    at::Tensor da = grad_a.select(0, t).mul_(dp);  // da = dp (z - h) k (1 - k)
    at::addcmul_out(carried, dp, dp, gates.select(0, t), -1);  // dp (1 - k)
    carried.addmm_(da, W_h);                                  // + da W_h
    if (kept) {
      carried.addcmul_(g, kept->select(0, t));  // masked rows pass g straight to h_{t-1}
    }
    std::swap(g, carried);
  }
  return g;  // dL/dh_0
}

// The float32 backward through time, each step's element-wise work in one pass per sequence
// (star_train_backward), then the carried gradient's product g_{t-1} += da_t W_h; fills the whole gradient
// of ua = [u, a] (T, B, 2H): du_t = dL/du_t into its first H columns, da_t = dL/da_t into the others, and
// returns dL/dh_0. ua = [z, k] as the forward left them, states (T + 1, B, H) = h_0..h_T, grad_outputs
// (T, B, H), mask (T, B) bool or None. The same sums as backward_steps in another order: float32 rounding.
at::Tensor train_backward_steps(const at::Tensor& grad_outputs, const at::Tensor& ua, const at::Tensor& states,
                                const at::Tensor& W_h, const std::optional<at::Tensor>& mask,
                                const at::Tensor& grad_ua) {
  for (const auto& [t, name] : {std::pair{&ua, "ua"}, {&states, "states"}, {&grad_ua, "grad_ua"}}) {
    check_dense_cpu(*t, name);
    TORCH_CHECK(t->dim() == 3 && t->is_contiguous() && t->scalar_type() == at::kFloat, "star_steps: ", name,
                " must be a contiguous float32 (T, B, ·) tensor");
  }
  const int64_t steps = ua.size(0), batch = ua.size(1), hidden = W_h.size(0);
  TORCH_CHECK(ua.size(2) == 2 * hidden && grad_ua.sizes() == ua.sizes(), "star_steps: ua and grad_ua must be (T, B, 2H)");
  TORCH_CHECK(states.sizes() == at::IntArrayRef({steps + 1, batch, hidden}), "star_steps: states must be (T + 1, B, H)");
  TORCH_CHECK(grad_outputs.sizes() == at::IntArrayRef({steps, batch, hidden}), "star_steps: grad_outputs must be (T, B, H)");
  // read in place where it is a contiguous float32 tensor; else (the expanded gradient of a mean, a
  // transposed one) one step at a time through a (B, H) copy, rather than a copy of all T steps
  const bool read_in_place = grad_outputs.is_contiguous() && grad_outputs.scalar_type() == at::kFloat;
  at::Tensor step_grad = read_in_place ? at::Tensor() : at::empty({batch, hidden}, ua.options());
  at::Tensor observed;  // (T, B) uint8: 1 where the step is observed
  if (mask) {
    TORCH_CHECK(mask->sizes() == at::IntArrayRef({steps, batch}), "star_steps: mask must be (T, B)");
    observed = mask->to(at::kCPU, at::kByte).contiguous();
  }
  const at::Tensor recurrent = W_h.to(at::kFloat).contiguous();
  at::Tensor g = at::zeros({batch, hidden}, ua.options());  // dL/dh_T before its output's gradient
  float* g_data = g.mutable_data_ptr<float>();
  const float* ua_data = ua.const_data_ptr<float>();
  const float* state_data = states.const_data_ptr<float>();
  float* grad_data = grad_ua.mutable_data_ptr<float>();
  for (int64_t t = steps - 1; t >= 0; --t) {
    const uint8_t* row_observed = mask ? observed.const_data_ptr<uint8_t>() + t * batch : nullptr;
    const float* step_grad_data;  // dL/dh_t through the output, (B, H)
    if (read_in_place) {
      step_grad_data = grad_outputs.const_data_ptr<float>() + t * batch * hidden;
    } else {
      step_grad_data = step_grad.copy_(grad_outputs.select(0, t)).const_data_ptr<float>();
    }
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t row = t * batch + b;  // (t, b) in the (T, B, ·) tensors
      float* g_row = g_data + b * hidden;
      const float* grad_output = step_grad_data + b * hidden;
      float* du = grad_data + row * 2 * hidden;
      if (row_observed && !row_observed[b]) {
        star_masked_backward(g_row, grad_output, du, du + hidden, hidden);
        continue;
      }
      const float* z = ua_data + row * 2 * hidden;
      star_train_backward(g_row, grad_output, state_data + (row + batch) * hidden, state_data + row * hidden, z,
                          z + hidden, du, du + hidden, hidden);
    }
    g.addmm_(grad_ua.select(0, t).narrow(1, hidden, hidden), recurrent);  // + da_t W_h
  }
  return g;  // dL/dh_0
}

// The inference forward through time of one dense STAR layer, float32 on CPU, in place (eq. 11-12):
//   per step the recurrent product into gates[t] (gates[t] += h_{t-1} W_h^T, at::addmm), then one loop
//   over its B x H values: k_t = sigma(gates[t]), h_t = tanh(h_{t-1} + k_t (z_t - h_{t-1})) into z[t];
//   the rows mask[t] hides keep h_{t-1} (copied; their inputs are never read).
// z (T, B, H) = tanh(W_z x + b_z) on entry, the outputs h_1..h_T on return; gates (T, B, H) = W_x x + b_k
// on entry, overwritten; W_h_t (H, H) = W_h^T; h0 (B, H) or None (zeros); mask (T, B) bool or None.
// sigma and tanh are computed as in exp_approx: within float32 rounding of ATen's, not bit-equal.
void inference_steps(const at::Tensor& z, const at::Tensor& gates, const at::Tensor& W_h_t,
                     const std::optional<at::Tensor>& h0, const std::optional<at::Tensor>& mask) {
  for (const auto& [t, name] : {std::pair{&z, "z"}, {&gates, "gates"}}) {
    check_dense_cpu(*t, name);
    TORCH_CHECK(t->dim() == 3 && t->is_contiguous() && t->scalar_type() == at::kFloat, "star_steps: ", name,
                " must be a contiguous float32 (T, B, H) tensor");
  }
  TORCH_CHECK(gates.sizes() == z.sizes(), "star_steps: gates and z must have the same shape");
  const int64_t steps = z.size(0), batch = z.size(1), hidden = z.size(2);
  TORCH_CHECK(W_h_t.sizes() == at::IntArrayRef({hidden, hidden}), "star_steps: W_h_t must be (H, H)");
  at::Tensor h = h0 ? h0->to(at::kFloat).contiguous() : at::zeros({batch, hidden}, z.options());
  TORCH_CHECK(h.sizes() == at::IntArrayRef({batch, hidden}), "star_steps: h0 must be (B, H)");
  at::Tensor observed;  // (T, B) uint8: 1 where the step is observed
  at::Tensor all_observed;  // (T,) per step: every sequence observed
  if (mask) {
    TORCH_CHECK(mask->sizes() == at::IntArrayRef({steps, batch}), "star_steps: mask must be (T, B)");
    observed = mask->to(at::kCPU, at::kByte).contiguous();
    all_observed = mask->to(at::kCPU, at::kBool).all(1).contiguous();
  }
  const at::Tensor recurrent = W_h_t.to(at::kFloat).contiguous();
  for (int64_t t = 0; t < steps; ++t) {
    at::Tensor gate = gates.select(0, t);
    gate.addmm_(h, recurrent);  // eq. 11, inside the sigma: a + W_h h
    at::Tensor out = z.select(0, t);
    const float* gate_data = gate.const_data_ptr<float>();
    const float* h_data = h.const_data_ptr<float>();
    float* out_data = out.mutable_data_ptr<float>();
    if (!mask || all_observed.const_data_ptr<bool>()[t]) {
      star_update(gate_data, h_data, out_data, batch * hidden);
    } else {
      const uint8_t* row_observed = observed.const_data_ptr<uint8_t>() + t * batch;
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t offset = b * hidden;
        if (row_observed[b]) {
          star_update(gate_data + offset, h_data + offset, out_data + offset, hidden);
        } else {
          std::copy_n(h_data + offset, hidden, out_data + offset);  // a masked step keeps h
        }
      }
    }
    h = out;
  }
}

// An uninitialised tensor of `sizes` (dtype and device of `like`), in memory this thread used before
// where it can: a thread-local pool of flat buffers, each handed out again only once nothing else holds
// its storage (no saved tensor, output or view of it is left), so reuse never changes a live value.
// Writing into fresh memory costs a page fault per 4 KB page, as much as a tenth of a training step.
// Buffers over `max_buffer_bytes`, or beyond `max_pool_bytes` in all, are allocated and freed as usual.
at::Tensor reusable_empty(at::IntArrayRef sizes, const at::Tensor& like, int64_t max_buffer_bytes,
                          int64_t max_pool_bytes) {
  thread_local std::vector<at::Tensor> pool;
  const int64_t numel = c10::multiply_integers(sizes);
  const int64_t bytes = numel * static_cast<int64_t>(like.element_size());
  if (bytes > max_buffer_bytes) {
    return at::empty(sizes, like.options());
  }
  const auto is_free = [&like](const at::Tensor& buffer) {
    return buffer.use_count() == 1 && buffer.storage().use_count() == 1 && buffer.scalar_type() == like.scalar_type() &&
           buffer.device() == like.device();
  };
  const at::Tensor* best = nullptr;
  int64_t pooled_bytes = 0;
  for (const at::Tensor& buffer : pool) {
    pooled_bytes += buffer.nbytes();
    if (is_free(buffer) && buffer.numel() >= numel && (!best || buffer.numel() < best->numel())) {
      best = &buffer;
    }
  }
  if (best) {
    return best->narrow(0, 0, numel).view(sizes);
  }
  at::Tensor fresh;
  {
    c10::InferenceMode normal_tensor(false);  // usable inside and outside inference mode alike
    fresh = at::empty({numel}, like.options());
  }
  // room for it: drop free buffers that are too small, largest first, while over the limit
  std::sort(pool.begin(), pool.end(), [](const at::Tensor& a, const at::Tensor& b) { return a.numel() > b.numel(); });
  for (auto it = pool.begin(); it != pool.end() && pooled_bytes + bytes > max_pool_bytes;) {
    if (is_free(*it)) {
      pooled_bytes -= it->nbytes();
      it = pool.erase(it);
    } else {
      ++it;
    }
  }
  if (pooled_bytes + bytes <= max_pool_bytes) {
    pool.push_back(fresh);
  }
  return fresh.view(sizes);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "The step loops of the fused dense STAR layer (cropstar.nn.fused_star), forward and backward, "
            "and of its float32 inference path (cropstar.nn.fast_star).";
  m.def("forward_steps", &forward_steps, "STAR forward through time (eq. 11-12), in place",
        py::arg("z"), py::arg("gates"), py::arg("states"), py::arg("W_h"), py::arg("mask"));
  m.def("backward_steps", &backward_steps, "STAR backward through time; returns dL/dh_0",
        py::arg("grad_outputs"), py::arg("grad_z"), py::arg("grad_a"), py::arg("gates"), py::arg("W_h"),
        py::arg("kept"));
  m.def("train_backward_steps", &train_backward_steps,
        "STAR float32 backward through time, element-wise work fused; fills grad_ua, returns dL/dh_0",
        py::arg("grad_outputs"), py::arg("ua"), py::arg("states"), py::arg("W_h"), py::arg("mask"),
        py::arg("grad_ua"));
  m.def("inference_steps", &inference_steps,
        "STAR inference forward through time (eq. 11-12), float32, element-wise work fused, in place",
        py::arg("z"), py::arg("gates"), py::arg("W_h_t"), py::arg("h0"), py::arg("mask"));
  m.def("reusable_empty", &reusable_empty, "An uninitialised tensor in memory this thread used before",
        py::arg("sizes"), py::arg("like"), py::arg("max_buffer_bytes"), py::arg("max_pool_bytes"));
}
