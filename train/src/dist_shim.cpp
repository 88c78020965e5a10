// Data-parallel training through libtorch's own distributed engine (c10d): a TCPStore for the
// rendezvous and a ProcessGroupGloo (CPU tensors) or ProcessGroupNCCL (CUDA tensors) for the
// collectives. tch does not bind c10d; these few C functions are what `dist.rs` needs.
// Every function returns 0, or 1 with the exception's message in `err`.
// Built with DMUE_WITH_C10D when gloo's headers (Debian's libgloo-dev, fetched by
// scripts/setup.sh) are found; without them every function reports how to get them.
#ifdef DMUE_WITH_C10D
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef DMUE_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#endif
#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
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
#endif
