// Fused training-mode batch norm + ReLU (+ residual add) for channels_last fp32 tensors on the CPU.
//
// A channels_last (N, C, H, W) tensor is, in memory, a matrix of M = N*H*W rows by C channels. PyTorch's
// eager path makes separate passes over it for the batch statistics, the normalisation, the add and the
// ReLU forward, and again for the ReLU mask, the two reductions and the input gradient backward. Here:
//
//   forward   pass 1: per-channel sum and sum of squares   pass 2: y = relu(x * a + b [+ s])
//   backward  pass 1: per-channel sums of g and g*(x-mean) pass 2: dx (and ds = g for the add)
//
// where g = dy masked by the ReLU. For batch norm + ReLU the mask is recomputed from x (nothing extra
// is saved); with the add it is read from the saved output y.
//
// Reductions are done per chunk of rows in float, then the chunks are summed in double in a fixed
// order. Chunk boundaries depend only on M and C, never on the number of threads, so results are
// bit-identical from run to run and from one thread count to another.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

int64_t rows_per_chunk(int64_t C) { return std::max<int64_t>(16, 8192 / C); }

void check_input(const torch::Tensor& t, const char* what, int64_t C) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32, what, " must be a float32 CPU tensor");
  TORCH_CHECK(t.dim() == 4 && t.size(1) == C && t.is_contiguous(at::MemoryFormat::ChannelsLast),
              what, " must be a 4-d channels_last tensor with ", C, " channels");
}

// Per-channel sums of f(row, c) over all rows: `part` holds one (sum_1, sum_2) pair of C floats per
// chunk, `body(chunk_begin_row, chunk_end_row, s1, s2)` fills them.
template <typename Body>
void chunked_sums(int64_t M, int64_t C, std::vector<double>& s1, std::vector<double>& s2, Body body) {
  const int64_t rows = rows_per_chunk(C);
  const int64_t nchunks = (M + rows - 1) / rows;
  std::vector<float> part(nchunks * 2 * C, 0.f);
  at::parallel_for(0, nchunks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      float* p1 = part.data() + k * 2 * C;
      body(k * rows, std::min(M, (k + 1) * rows), p1, p1 + C);
    }
  });
  s1.assign(C, 0.0);
  s2.assign(C, 0.0);
  for (int64_t k = 0; k < nchunks; ++k)
    for (int64_t c = 0; c < C; ++c) {
      s1[c] += part[k * 2 * C + c];
      s2[c] += part[k * 2 * C + C + c];
    }
}

template <typename Body>
void over_rows(int64_t M, int64_t C, Body body) {
  const int64_t rows = rows_per_chunk(C);
  const int64_t nchunks = (M + rows - 1) / rows;
  at::parallel_for(0, nchunks, 1, [&](int64_t k0, int64_t k1) {
    body(k0 * rows, std::min(M, k1 * rows));
  });
}

}  // namespace

// Returns (y, mean, invstd) and updates running_mean/running_var in place when they are defined.
std::vector<torch::Tensor> forward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias,
                                   c10::optional<torch::Tensor> shortcut, c10::optional<torch::Tensor> running_mean,
                                   c10::optional<torch::Tensor> running_var, double momentum, double eps) {
  const int64_t C = x.size(1);
  check_input(x, "input", C);
  const int64_t M = x.numel() / C;
  TORCH_CHECK(M > 1, "batch norm needs more than one value per channel in training");
  const bool add = shortcut.has_value() && shortcut->defined();
  if (add) {
    check_input(*shortcut, "shortcut", C);
    TORCH_CHECK(shortcut->sizes() == x.sizes(), "shortcut shape ", shortcut->sizes(), " != input shape ", x.sizes());
  }
  auto w = weight.contiguous();
  auto b = bias.contiguous();
  const float* X = x.data_ptr<float>();

  // Shifting by the first row keeps sum(d^2)/M - mean(d)^2 well conditioned when |mean| >> std.
  std::vector<float> shift(X, X + C);
  std::vector<double> sum, sumsq;
  chunked_sums(M, C, sum, sumsq, [&](int64_t r0, int64_t r1, float* __restrict__ ps, float* __restrict__ pq) {
    const float* sh = shift.data();
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict__ xr = X + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float d = xr[c] - sh[c];
        ps[c] += d;
        pq[c] += d * d;
      }
    }
  });

  auto mean = torch::empty({C}, x.options());
  auto invstd = torch::empty({C}, x.options());
  float* MEAN = mean.data_ptr<float>();
  float* INV = invstd.data_ptr<float>();
  const float* W = w.data_ptr<float>();
  const float* B = b.data_ptr<float>();
  std::vector<float> scale(C), offset(C);
  std::vector<double> unbiased(C);
  for (int64_t c = 0; c < C; ++c) {
    const double m = sum[c] / M;
    const double var = std::max(0.0, sumsq[c] / M - m * m);
    MEAN[c] = static_cast<float>(m + shift[c]);
    INV[c] = static_cast<float>(1.0 / std::sqrt(var + eps));
    unbiased[c] = var * M / (M - 1);
    scale[c] = W[c] * INV[c];  // y = x * scale + offset  ==  (x - mean) * invstd * w + b
    offset[c] = B[c] - MEAN[c] * scale[c];
  }
  if (running_mean.has_value() && running_mean->defined()) {
    float* RM = running_mean->data_ptr<float>();
    float* RV = running_var->data_ptr<float>();
    for (int64_t c = 0; c < C; ++c) {
      RM[c] = static_cast<float>((1.0 - momentum) * RM[c] + momentum * MEAN[c]);
      RV[c] = static_cast<float>((1.0 - momentum) * RV[c] + momentum * unbiased[c]);
    }
  }

  auto y = torch::empty_like(x);
  float* Y = y.data_ptr<float>();
  const float* S = add ? shortcut->data_ptr<float>() : nullptr;
  over_rows(M, C, [&](int64_t r0, int64_t r1) {
    const float* a = scale.data();
    const float* o = offset.data();
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict__ xr = X + r * C;
      float* __restrict__ yr = Y + r * C;
      if (add) {
        const float* __restrict__ sr = S + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) yr[c] = std::max(xr[c] * a[c] + o[c] + sr[c], 0.f);
      } else {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) yr[c] = std::max(xr[c] * a[c] + o[c], 0.f);
      }
    }
  });
  return {y, mean, invstd};
}

// Returns (dx, dweight, dbias[, dshortcut]). `y` (the forward output) is read only when `add`.
std::vector<torch::Tensor> backward(torch::Tensor dy, torch::Tensor x, c10::optional<torch::Tensor> y,
                                    torch::Tensor weight, torch::Tensor bias, torch::Tensor mean,
                                    torch::Tensor invstd) {
  const int64_t C = x.size(1);
  const int64_t M = x.numel() / C;
  const bool add = y.has_value() && y->defined();
  dy = dy.contiguous(at::MemoryFormat::ChannelsLast);
  auto w = weight.contiguous();
  auto b = bias.contiguous();
  const float* X = x.data_ptr<float>();
  const float* DY = dy.data_ptr<float>();
  const float* Y = add ? y->data_ptr<float>() : nullptr;
  const float* MEAN = mean.data_ptr<float>();
  const float* INV = invstd.data_ptr<float>();
  const float* W = w.data_ptr<float>();
  const float* B = b.data_ptr<float>();
  std::vector<float> scale(C), offset(C);
  for (int64_t c = 0; c < C; ++c) {  // the same expressions as the forward: the recomputed mask matches
    scale[c] = W[c] * INV[c];
    offset[c] = B[c] - MEAN[c] * scale[c];
  }

  std::vector<double> sum_g, sum_gx;  // per channel: sum(g), sum(g * (x - mean))
  chunked_sums(M, C, sum_g, sum_gx, [&](int64_t r0, int64_t r1, float* __restrict__ pg, float* __restrict__ pgx) {
    const float* a = scale.data();
    const float* o = offset.data();
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict__ xr = X + r * C;
      const float* __restrict__ dr = DY + r * C;
      if (add) {
        const float* __restrict__ yr = Y + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float g = yr[c] > 0.f ? dr[c] : 0.f;
          pg[c] += g;
          pgx[c] += g * (xr[c] - MEAN[c]);
        }
      } else {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float g = xr[c] * a[c] + o[c] > 0.f ? dr[c] : 0.f;
          pg[c] += g;
          pgx[c] += g * (xr[c] - MEAN[c]);
        }
      }
    }
  });

  auto dweight = torch::empty({C}, x.options());
  auto dbias = torch::empty({C}, x.options());
  // dx = w * invstd * (g - sum_g / M - (x - mean) * invstd^2 * sum_gx / M)  =  g * k1 + x * k2 + k3
  std::vector<float> k1(C), k2(C), k3(C);
  for (int64_t c = 0; c < C; ++c) {
    const double inv = INV[c];
    dweight.data_ptr<float>()[c] = static_cast<float>(sum_gx[c] * inv);
    dbias.data_ptr<float>()[c] = static_cast<float>(sum_g[c]);
    const double c1 = W[c] * inv;
    const double c2 = -W[c] * inv * inv * inv * sum_gx[c] / M;
    k1[c] = static_cast<float>(c1);
    k2[c] = static_cast<float>(c2);
    k3[c] = static_cast<float>(-c1 * sum_g[c] / M - c2 * MEAN[c]);
  }
  auto dx = torch::empty_like(x);
  torch::Tensor dshortcut = add ? torch::empty_like(x) : torch::Tensor();
  float* DX = dx.data_ptr<float>();
  float* DS = add ? dshortcut.data_ptr<float>() : nullptr;
  over_rows(M, C, [&](int64_t r0, int64_t r1) {
    const float* a = scale.data();
    const float* o = offset.data();
    const float* q1 = k1.data();
    const float* q2 = k2.data();
    const float* q3 = k3.data();
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict__ xr = X + r * C;
      const float* __restrict__ dr = DY + r * C;
      float* __restrict__ out = DX + r * C;
      if (add) {
        const float* __restrict__ yr = Y + r * C;
        float* __restrict__ sr = DS + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float g = yr[c] > 0.f ? dr[c] : 0.f;
          sr[c] = g;
          out[c] = g * q1[c] + xr[c] * q2[c] + q3[c];
        }
      } else {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float g = xr[c] * a[c] + o[c] > 0.f ? dr[c] : 0.f;
          out[c] = g * q1[c] + xr[c] * q2[c] + q3[c];
        }
      }
    }
  });
  if (add) return {dx, dweight, dbias, dshortcut};
  return {dx, dweight, dbias};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "batch norm (training) + [add] + ReLU, channels_last fp32");
  m.def("backward", &backward, "gradients of forward");
}
