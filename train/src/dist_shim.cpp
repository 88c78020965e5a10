// Data-parallel training through libtorch's own distributed engine (c10d): a TCPStore for the
// rendezvous and a ProcessGroupGloo (CPU tensors) or ProcessGroupNCCL (CUDA tensors) for the
// collectives. tch does not bind c10d; these few C functions are what `dist/mod.rs` needs, plus
// a gradient reducer that sums gradients while the backward pass still runs (autograd hooks,
// which tch does not expose).
// Every function returns 0, or 1 with the exception's message in `err`.
// Built with DMUE_WITH_C10D when gloo's headers (Debian's libgloo-dev, fetched by
// scripts/setup.sh) are found; without them every function reports how to get them.
#ifdef DMUE_WITH_C10D
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>
#ifdef DMUE_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#endif
#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#ifdef DMUE_WITH_C10D
namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

int fail(const std::exception &e, char *err, unsigned long err_len) {
  std::snprintf(err, err_len, "%s", e.what());
  return 1;
}

bool is_loopback(const std::string &addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

std::vector<at::Tensor> collect(at::Tensor **tensors, long n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (long i = 0; i < n; i++) v.push_back(*tensors[i]);
  return v;
}

}  // namespace

// Joins the job: rank 0 hosts the store at `addr:port`, every rank connects to it, then the
// backend ("gloo" or "nccl") is set up. `timeout_ms` bounds the rendezvous and every collective.
extern "C" int dmue_dist_init(const char *backend, const char *addr, int port, int rank,
                              int world, long timeout_ms, void **out, char *err,
                              unsigned long err_len) {
  try {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = rank == 0;
    so.numWorkers = world;
    so.waitWorkers = true;
    so.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(addr), so);
    auto *g = new Group{store, {}, timeout};
    std::string which(backend);
    if (which == "gloo") {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      // The interface to bind: GLOO_SOCKET_IFNAME as in PyTorch, loopback for a one-machine
      // job on 127.0.0.1, else the address this host's name resolves to.
      const char *ifname = std::getenv("GLOO_SOCKET_IFNAME");
      if (ifname != nullptr && *ifname != '\0') {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else if (is_loopback(addr)) {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      g->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    } else if (which == "nccl") {
#ifdef DMUE_WITH_NCCL
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      g->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
#else
      delete g;
      std::snprintf(err, err_len, "this dmue-train was built without NCCL headers");
      return 1;
#endif
    } else {
      delete g;
      std::snprintf(err, err_len, "unknown backend %s", backend);
      return 1;
    }
    *out = g;
    return 0;
  } catch (const std::exception &e) {
    return fail(e, err, err_len);
  }
}

extern "C" void dmue_dist_free(void *group) { delete static_cast<Group *>(group); }

// In-place sum of `n` tensors over every rank (each tensor its own collective, in order).
extern "C" int dmue_dist_allreduce_sum(void *group, at::Tensor **tensors, long n, char *err,
                                       unsigned long err_len) {
  try {
    auto *g = static_cast<Group *>(group);
    for (long i = 0; i < n; i++) {
      std::vector<at::Tensor> one{*tensors[i]};
      g->backend->allreduce(one)->wait(g->timeout);
    }
    return 0;
  } catch (const std::exception &e) {
    return fail(e, err, err_len);
  }
}

// In-place copy of rank `root`'s tensors to every rank.
extern "C" int dmue_dist_broadcast(void *group, at::Tensor **tensors, long n, int root,
                                   char *err, unsigned long err_len) {
  try {
    auto *g = static_cast<Group *>(group);
    c10d::BroadcastOptions o;
    o.rootRank = root;
    for (auto &t : collect(tensors, n)) {
      std::vector<at::Tensor> one{t};
      g->backend->broadcast(one, o)->wait(g->timeout);
    }
    return 0;
  } catch (const std::exception &e) {
    return fail(e, err, err_len);
  }
}

extern "C" int dmue_dist_barrier(void *group, char *err, unsigned long err_len) {
  try {
    auto *g = static_cast<Group *>(group);
    g->backend->barrier()->wait(g->timeout);
    return 0;
  } catch (const std::exception &e) {
    return fail(e, err, err_len);
  }
}

// A second connection to the store (for a thread of its own: one connection is not shared
// between threads).
extern "C" int dmue_dist_store_clone(void *group, void **out, char *err, unsigned long err_len) {
  try {
    auto *g = static_cast<Group *>(group);
    *out = new Group{g->store->clone(), {}, g->timeout};
    return 0;
  } catch (const std::exception &e) {
    return fail(e, err, err_len);
  }
}

// Atomically adds `delta` to the integer at `key` (created at 0); the new value in `value`.
extern "C" int dmue_dist_store_add(void *group, const char *key, long delta, long *value,
                                   char *err, unsigned long err_len) {
  try {
    auto *g = static_cast<Group *>(group);
    *value = g->store->add(std::string(key), delta);
    return 0;
  } catch (const std::exception &e) {
    return fail(e, err, err_len);
  }
}

// Gradient reduction overlapped with the backward pass, as PyTorch's DDP does it:
// - every parameter's gradient is a view into a flat bucket ("gradient as bucket view"), so the
//   backward pass accumulates straight into the buffers the ranks sum;
// - a hook after each parameter's gradient accumulator counts the bucket down; a bucket whose
//   parameters are all done is summed asynchronously while autograd computes the rest;
// - buckets are launched strictly in index order, so every rank issues the same collectives in
//   the same order even when a parameter is unused on one rank (its bucket then waits for the
//   end of the pass);
// - after the first pass the buckets are rebuilt in the order rank 0's gradients became ready
//   (the first bucket small, so the exchange starts early), and every rank takes that layout.
namespace {

using torch::autograd::Node;
using torch::autograd::variable_list;

struct Reducer {
  Group *g = nullptr;
  int world = 1;
  long first_cap = 0, cap = 0;
  std::vector<at::Tensor> params;
  std::vector<std::shared_ptr<Node>> accumulators;
  std::vector<uintptr_t> hook_keys;
  std::vector<size_t> bucket_of;
  std::vector<at::Tensor> flats;
  std::vector<int> members, pending;
  size_t next_launch = 0;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  bool armed = false, rebuilt = false;
  std::vector<long> ready_order;
  std::string error;
  std::mutex m;

  // Lays the buckets out over `order` (every parameter once); a parameter's current gradient
  // is carried into its new view.
  void layout(const std::vector<long> &order) {
    std::vector<std::vector<long>> groups;
    long bytes = 0;
    for (long i : order) {
      const auto &p = params[i];
      long size = p.numel() * static_cast<long>(p.element_size());
      long limit = groups.size() == 1 ? first_cap : cap;  // of the bucket being filled
      bool fits = false;
      if (!groups.empty()) {
        const auto &head = params[groups.back()[0]];
        fits = head.scalar_type() == p.scalar_type() && head.device() == p.device() &&
               bytes + size <= limit;
      }
      if (fits) {
        groups.back().push_back(i);
        bytes += size;
      } else {
        groups.push_back({i});
        bytes = size;
      }
    }
    std::vector<at::Tensor> new_flats;
    bucket_of.assign(params.size(), 0);
    members.clear();
    for (size_t b = 0; b < groups.size(); b++) {
      long n = 0;
      for (long i : groups[b]) n += params[i].numel();
      const auto &head = params[groups[b][0]];
      auto flat = at::zeros({n}, head.options().requires_grad(false));
      long offset = 0;
      for (long i : groups[b]) {
        auto &p = params[i];
        auto view = flat.narrow(0, offset, p.numel()).view(p.sizes());
        if (p.grad().defined()) view.copy_(p.grad());
        p.mutable_grad() = view;
        bucket_of[i] = b;
        offset += p.numel();
      }
      new_flats.push_back(flat);
      members.push_back(static_cast<int>(groups[b].size()));
    }
    flats = std::move(new_flats);
  }

  // Hooks every parameter that now takes part in autograd (a frozen parameter may start to).
  void hook_parameters() {
    for (size_t i = 0; i < params.size(); i++) {
      if (!params[i].requires_grad()) continue;
      auto acc = torch::autograd::impl::grad_accumulator(params[i]);
      if (acc == nullptr || acc == accumulators[i]) continue;
      if (accumulators[i] != nullptr) accumulators[i]->del_post_hook(hook_keys[i]);
      hook_keys[i] = acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
          [this, i](const variable_list &outputs, const variable_list &) {
            this->on_ready(i);
            return outputs;
          }));
      accumulators[i] = acc;
    }
  }

  void launch_ready() {
    while (next_launch < flats.size() && pending[next_launch] == 0) {
      std::vector<at::Tensor> one{flats[next_launch]};
      works.push_back(g->backend->allreduce(one));
      next_launch++;
    }
  }

  void on_ready(size_t i) {
    std::lock_guard<std::mutex> lock(m);
    if (!armed || !error.empty()) return;
    try {
      if (!rebuilt) ready_order.push_back(static_cast<long>(i));
      if (--pending[bucket_of[i]] == 0) launch_ready();
    } catch (const std::exception &e) {
      error = e.what();
    }
  }

  void arm() {
    std::lock_guard<std::mutex> lock(m);
    hook_parameters();
    pending = members;
    next_launch = 0;
    works.clear();
    ready_order.clear();
    error.clear();
    armed = true;
  }

  // Sums what the hooks did not launch (unused or frozen parameters), waits for every bucket
  // and divides by the number of ranks. After the first pass, rebuilds the layout.
  void finish() {
    std::lock_guard<std::mutex> lock(m);
    armed = false;
    if (!error.empty()) throw std::runtime_error(error);
    for (size_t b = next_launch; b < flats.size(); b++) pending[b] = 0;
    launch_ready();
    for (auto &w : works) w->wait(g->timeout);
    works.clear();
    for (auto &f : flats) f.div_(world);
    if (rebuilt) return;
    // Rank 0's ready order, then what never became ready, from the last parameter back.
    std::vector<long> order;
    std::vector<bool> seen(params.size(), false);
    for (long i : ready_order)
      if (!seen[i]) {
        seen[i] = true;
        order.push_back(i);
      }
    for (long i = static_cast<long>(params.size()) - 1; i >= 0; i--)
      if (!seen[i]) order.push_back(i);
    auto t = at::tensor(order, at::kLong).to(flats[0].device());
    std::vector<at::Tensor> one{t};
    c10d::BroadcastOptions o;
    o.rootRank = 0;
    g->backend->broadcast(one, o)->wait(g->timeout);
    auto cpu = t.cpu();
    const long *data = cpu.data_ptr<long>();
    layout(std::vector<long>(data, data + order.size()));
    rebuilt = true;
  }
};

}  // namespace

// A reducer for `n` parameters (in the same order on every rank); buckets of at most
// `cap_bytes`, the first of at most `first_cap_bytes`. Installs every gradient as a view.
extern "C" int dmue_reducer_new(void *group, at::Tensor **params, long n, long first_cap_bytes,
                                long cap_bytes, void **out, char *err, unsigned long err_len) {
  try {
    auto *r = new Reducer();
    r->g = static_cast<Group *>(group);
    r->world = r->g->backend->getSize();
    r->first_cap = first_cap_bytes;
    r->cap = cap_bytes;
    for (long i = 0; i < n; i++) r->params.push_back(*params[i]);
    r->accumulators.assign(n, nullptr);
    r->hook_keys.assign(n, 0);
    std::vector<long> order;
    for (long i = n - 1; i >= 0; i--) order.push_back(i);  // backward runs roughly last to first
    r->layout(order);
    *out = r;
    return 0;
  } catch (const std::exception &e) {
    return fail(e, err, err_len);
  }
}

// Before the backward pass whose gradients are to be summed.
extern "C" int dmue_reducer_arm(void *reducer, char *err, unsigned long err_len) {
  try {
    static_cast<Reducer *>(reducer)->arm();
    return 0;
  } catch (const std::exception &e) {
    return fail(e, err, err_len);
  }
}

// After it: every gradient is then the mean over the ranks.
extern "C" int dmue_reducer_finish(void *reducer, char *err, unsigned long err_len) {
  try {
    static_cast<Reducer *>(reducer)->finish();
    return 0;
  } catch (const std::exception &e) {
    return fail(e, err, err_len);
  }
}

extern "C" void dmue_reducer_free(void *reducer) {
  auto *r = static_cast<Reducer *>(reducer);
  for (size_t i = 0; i < r->params.size(); i++)
    if (r->accumulators[i] != nullptr) r->accumulators[i]->del_post_hook(r->hook_keys[i]);
  delete r;
}

#else
namespace {
int missing(char *err, unsigned long err_len) {
  std::snprintf(err, err_len,
                "this dmue-train was built without c10d's gloo headers: run scripts/setup.sh "
                "(it fetches Debian's libgloo-dev), then cargo clean -p dmue-train and build again");
  return 1;
}
}  // namespace
extern "C" int dmue_dist_init(const char *, const char *, int, int, int, long, void **out,
                              char *err, unsigned long err_len) {
  *out = nullptr;
  return missing(err, err_len);
}
extern "C" void dmue_dist_free(void *) {}
extern "C" int dmue_dist_allreduce_sum(void *, at::Tensor **, long, char *err,
                                       unsigned long err_len) {
  return missing(err, err_len);
}
extern "C" int dmue_dist_broadcast(void *, at::Tensor **, long, int, char *err,
                                   unsigned long err_len) {
  return missing(err, err_len);
}
extern "C" int dmue_dist_barrier(void *, char *err, unsigned long err_len) {
  return missing(err, err_len);
}
extern "C" int dmue_dist_store_clone(void *, void **out, char *err, unsigned long err_len) {
  *out = nullptr;
  return missing(err, err_len);
}
extern "C" int dmue_dist_store_add(void *, const char *, long, long *, char *err,
                                   unsigned long err_len) {
  return missing(err, err_len);
}
extern "C" int dmue_reducer_new(void *, at::Tensor **, long, long, long, void **out, char *err,
                                unsigned long err_len) {
  *out = nullptr;
  return missing(err, err_len);
}
extern "C" int dmue_reducer_arm(void *, char *err, unsigned long err_len) {
  return missing(err, err_len);
}
extern "C" int dmue_reducer_finish(void *, char *err, unsigned long err_len) {
  return missing(err, err_len);
}
extern "C" void dmue_reducer_free(void *) {}
#endif
