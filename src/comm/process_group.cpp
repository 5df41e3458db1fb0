// The multi-process Communicator on c10d. Gloo carries CPU tensors; NCCL carries CUDA tensors where
// LibTorch was built with it (MOELAB_HAVE_NCCL). Only this file includes c10d's headers, so the
// rest of moelab builds the same with or without them.
//
// Finding the culprit when a collective fails: every rank runs a heartbeat thread that bumps two
// counters in the rendezvous store once a second, "beat/<rank>" and "progress/<rank>" (collectives
// entered). A survivor whose collective failed or timed out reads the beats twice, a few seconds
// apart: a rank whose beat did not move is dead or stopped; if every beat moves, the rank whose
// progress lags is stuck outside communication; if the store itself is gone, rank 0 (its host) is.
#include "moelab/comm/communicator.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <thread>

#include "moelab/device/device.h"
#include "moelab/util/error.h"

#ifdef MOELAB_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#ifdef MOELAB_HAVE_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace moelab {

#ifndef MOELAB_HAVE_GLOO

bool distributed_backend_available() { return false; }

std::shared_ptr<Communicator> connect_process_group(const LaunchEnvironment& launch, std::chrono::milliseconds,
                                                    torch::Device) {
  fail("WORLD_SIZE = {} asks for {} processes, but this moelab was built without a distributed backend "
       "(Gloo's headers, Debian package libgloo-dev, were not found at build time): install it and rebuild",
       launch.world_size, launch.world_size);
}

#else

bool distributed_backend_available() { return true; }

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kBeatPeriod = std::chrono::milliseconds(1000);
constexpr auto kStaleWindow = std::chrono::milliseconds(2500);

// Gloo's messages can run long (every address it tried); a one-line error keeps their start.
std::string short_reason(const std::exception& error) {
  auto text = first_line(error);
  if (text.size() > 240) text = text.substr(0, 240) + "...";
  return text;
}

std::string beat_key(int rank) { return fmt::format("moelab/beat/{}", rank); }
std::string progress_key(int rank) { return fmt::format("moelab/progress/{}", rank); }

// Publishes this rank's liveness and progress to the store once a second.
class Heartbeat {
 public:
  Heartbeat(c10::intrusive_ptr<c10d::Store> store, int rank) : store_(std::move(store)), rank_(rank) {
    thread_ = std::thread([this] { run(); });
  }
  ~Heartbeat() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  void entered_collective() { progress_.fetch_add(1); }

 private:
  void run() {
    int64_t published = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      lock.unlock();
      try {
        store_->add(beat_key(rank_), 1);
        const int64_t now = progress_.load();
        if (now != published) store_->add(progress_key(rank_), now - published);
        published = now;
      } catch (const std::exception&) {
        return;  // the store's host is gone; the next collective reports it
      }
      lock.lock();
      wake_.wait_for(lock, kBeatPeriod, [this] { return stop_; });
    }
  }

  c10::intrusive_ptr<c10d::Store> store_;
  int rank_;
  std::atomic<int64_t> progress_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

template <typename Group>
class C10dCommunicator : public Communicator {
 public:
  C10dCommunicator(const LaunchEnvironment& launch, c10::intrusive_ptr<c10d::Store> store,
                   c10::intrusive_ptr<Group> group, std::string backend, torch::Device device,
                   std::chrono::milliseconds timeout)
      : launch_(launch),
        store_(std::move(store)),
        group_(std::move(group)),
        backend_(std::move(backend)),
        device_(device),
        timeout_(timeout),
        heartbeat_(std::make_unique<Heartbeat>(store_, launch.rank)) {}

  ~C10dCommunicator() override {
    heartbeat_.reset();
    group_.reset();
    store_.reset();
  }

  int rank() const override { return launch_.rank; }
  int world_size() const override { return launch_.world_size; }
  std::string backend() const override { return backend_; }
  torch::Device device() const override { return device_; }

  void all_reduce_sum(torch::Tensor& tensor) override {
    auto buffer = tensor.is_contiguous() ? tensor : tensor.contiguous();
    std::vector<at::Tensor> tensors{buffer};
    run("all_reduce", bytes_of(buffer), [&] { return group_->allreduce(tensors); });
    if (!buffer.is_same(tensor)) tensor.copy_(buffer);
  }

  std::vector<torch::Tensor> all_gather(const torch::Tensor& tensor) override {
    std::vector<at::Tensor> inputs{tensor.contiguous()};
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int r = 0; r < world_size(); ++r) outputs[0].push_back(torch::empty_like(inputs[0]));
    run("all_gather", bytes_of(inputs[0]), [&] { return group_->allgather(outputs, inputs); });
    return outputs[0];
  }

  torch::Tensor all_to_all(const torch::Tensor& input, const std::vector<int64_t>& send_rows,
                           const std::vector<int64_t>& recv_rows) override {
    TORCH_CHECK(static_cast<int>(send_rows.size()) == world_size() && static_cast<int>(recv_rows.size()) == world_size(),
                "all_to_all needs one split size per rank");
    int64_t received = 0;
    for (auto rows : recv_rows) received += rows;
    auto sizes = input.sizes().vec();
    sizes[0] = received;
    auto output = torch::empty(sizes, input.options());
    auto in = input.contiguous();
    auto out_splits = recv_rows, in_splits = send_rows;
    run("all_to_all", bytes_of(in), [&] { return group_->alltoall_base(output, in, out_splits, in_splits); });
    return output;
  }

  void broadcast(torch::Tensor& tensor, int root) override {
    auto buffer = tensor.is_contiguous() ? tensor : tensor.contiguous();
    std::vector<at::Tensor> tensors{buffer};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    run("broadcast", bytes_of(buffer), [&] { return group_->broadcast(tensors, options); });
    if (!buffer.is_same(tensor)) tensor.copy_(buffer);
  }

  void barrier() override {
    run("barrier", 0, [&] { return group_->barrier(); });
  }

 private:
  static int64_t bytes_of(const torch::Tensor& t) { return t.numel() * static_cast<int64_t>(t.element_size()); }

  template <typename Launch>
  void run(const char* kind, int64_t bytes, Launch&& launch) {
    if (world_failed()) fail("a collective failed earlier in this process; no further communication is possible");
    ++sequence_;
    heartbeat_->entered_collective();
    const auto started = Clock::now();
    try {
      auto work = launch();
      // The group's own timeout bounds the operation; this one bounds the wait if it does not.
      work->wait(timeout_ + std::chrono::milliseconds(2000));
      // NCCL's wait only orders the current stream after the collective; the tally wants the time
      // the data took to arrive.
      if (device_.is_cuda()) synchronize_device(device_);
    } catch (const std::exception& error) {
      mark_world_failed();
      throw Error(fmt::format("{} #{} failed on rank {} of {}: {}; {} said: {}", kind, sequence_, rank(), world_size(),
                              find_culprit(), backend_, short_reason(error)));
    }
    auto& tally = tallies_[kind];
    ++tally.calls;
    tally.bytes_sent += bytes;
    tally.seconds += std::chrono::duration<double>(Clock::now() - started).count();
  }

  // Which rank stopped, from the heartbeat counters (see the top of this file).
  std::string find_culprit() {
    const int world = world_size();
    try {
      std::vector<int64_t> before(world), after(world), progress(world);
      for (int r = 0; r < world; ++r) before[r] = store_->add(beat_key(r), 0);
      std::this_thread::sleep_for(kStaleWindow);
      for (int r = 0; r < world; ++r) after[r] = store_->add(beat_key(r), 0);
      for (int r = 0; r < world; ++r) progress[r] = store_->add(progress_key(r), 0);
      std::vector<std::string> stopped;
      for (int r = 0; r < world; ++r)
        if (r != rank() && after[r] == before[r]) stopped.push_back(std::to_string(r));
      if (!stopped.empty())
        return fmt::format("rank {} stopped responding (no heartbeat for {:.1f} s): it died or is frozen",
                           fmt::join(stopped, ", "), std::chrono::duration<double>(kStaleWindow).count());
      const int64_t furthest = *std::max_element(progress.begin(), progress.end());
      std::vector<std::string> behind;
      for (int r = 0; r < world; ++r)
        if (r != rank() && progress[r] < furthest) behind.push_back(fmt::format("{} (at collective {})", r, progress[r]));
      if (!behind.empty())
        return fmt::format("rank {} is alive but stuck outside communication, behind collective {}",
                           fmt::join(behind, ", "), furthest);
      return "every rank is alive and at the same collective (a network error, or a timeout too short for this step)";
    } catch (const std::exception&) {
      return fmt::format("rank 0 stopped responding (its rendezvous store at {}:{} is unreachable): it died, or its "
                         "machine did",
                         launch_.master_addr, launch_.master_port);
    }
  }

  LaunchEnvironment launch_;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<Group> group_;
  std::string backend_;
  torch::Device device_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<Heartbeat> heartbeat_;
  int64_t sequence_ = 0;
};

std::shared_ptr<::gloo::transport::Device> gloo_device(const std::string& master_addr) {
  if (const char* interface = std::getenv("GLOO_SOCKET_IFNAME"))
    return c10d::ProcessGroupGloo::createDeviceForInterface(interface);
  // Everyone on this machine: bind to loopback, which works without a resolvable hostname.
  if (master_addr.rfind("127.", 0) == 0 || master_addr == "localhost")
    return c10d::ProcessGroupGloo::createDeviceForHostname(master_addr);
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

}  // namespace

std::shared_ptr<Communicator> connect_process_group(const LaunchEnvironment& launch, std::chrono::milliseconds timeout,
                                                    torch::Device device) {
  const auto where = fmt::format("{}:{}", launch.master_addr, launch.master_port);
  c10::intrusive_ptr<c10d::Store> store;
  try {
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(launch.master_port);
    // torchrun's agent already hosts the store on MASTER_PORT and says so; otherwise rank 0 hosts it.
    const char* agent_store = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
    options.isServer = launch.rank == 0 && !(agent_store && std::string(agent_store) == "True");
    options.numWorkers = static_cast<std::size_t>(launch.world_size);
    options.waitWorkers = true;
    options.timeout = timeout;
    store = c10::make_intrusive<c10d::TCPStore>(launch.master_addr, options);
  } catch (const std::exception& error) {
    fail("rank {} of {}: rendezvous at {} failed (timeout {} s): {}", launch.rank, launch.world_size, where,
         timeout.count() / 1000.0, short_reason(error));
  }
  // Collectives get most of the timeout; the rest is for naming the culprit when one fails.
  const auto op_timeout = std::max(timeout / 2, timeout - std::chrono::milliseconds(5000));
  try {
#ifdef MOELAB_HAVE_NCCL
    if (device.is_cuda()) {
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = op_timeout;
      auto group = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, launch.rank, launch.world_size, options);
      return std::make_shared<C10dCommunicator<c10d::ProcessGroupNCCL>>(launch, store, group, "nccl", device,
                                                                        op_timeout);
    }
#endif
    if (!device.is_cpu())
      fail("distributed training on {} needs a LibTorch with NCCL; this build has Gloo (CPU) only", device.str());
    auto options = c10d::ProcessGroupGloo::Options::create(op_timeout);
    options->devices.push_back(gloo_device(launch.master_addr));
    auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, launch.rank, launch.world_size, options);
    return std::make_shared<C10dCommunicator<c10d::ProcessGroupGloo>>(launch, store, group, "gloo", device,
                                                                      op_timeout);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& error) {
    fail("rank {} of {}: cannot set up the process group through {}: {}", launch.rank, launch.world_size, where,
         short_reason(error));
  }
}

#endif  // MOELAB_HAVE_GLOO

}  // namespace moelab
