// What tch 0.24 does not expose.
// 1. Autocast's dtype: tch can switch autocast on but not choose its dtype (libtorch's CUDA
//    default is fp16). dmue_set_cuda_autocast_bf16 selects bf16 for CUDA autocast.
// 2. libtorch's fused Adam (at::_fused_adam_, the kernel behind torch.optim.Adam(fused=True), on
//    CPU and CUDA): one call updates every parameter instead of ~6 kernels per tensor.
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_fused_adam.h>

#include <cstdio>
#include <exception>
#include <vector>

extern "C" void dmue_set_cuda_autocast_bf16() {
  at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
}

// `n` parameters with their gradients and moments (tch tensors are `at::Tensor*`); `step` is a
// float32 tensor on the parameters' device holding the step number (already incremented), read
// by the kernel for the bias corrections. Returns 0, or 1 with the message in `err`.
extern "C" int dmue_fused_adam(at::Tensor **params, at::Tensor **grads, at::Tensor **exp_avgs,
                               at::Tensor **exp_avg_sqs, at::Tensor *step, long n, double lr,
                               double beta1, double beta2, double weight_decay, double eps,
                               char *err, unsigned long err_len) {
  try {
    std::vector<at::Tensor> p, g, m, v, s;
    for (long i = 0; i < n; i++) {
      p.push_back(*params[i]);
      g.push_back(*grads[i]);
      m.push_back(*exp_avgs[i]);
      v.push_back(*exp_avg_sqs[i]);
      s.push_back(*step);
    }
    std::vector<at::Tensor> no_max;  // amsgrad off
    at::_fused_adam_(p, g, m, v, no_max, s, lr, beta1, beta2, weight_decay, eps,
                     /*amsgrad=*/false, /*maximize=*/false);
    return 0;
  } catch (const std::exception &e) {
    std::snprintf(err, err_len, "%s", e.what());
    return 1;
  }
}
