// The collectives moelab's distributed training needs, behind one small interface: sums, gathers,
// the variable-split all-to-all of expert parallelism, broadcast and barrier. The multi-process
// implementation runs on LibTorch's own c10d process groups (Gloo for CPU tensors, NCCL for CUDA
// tensors); a single process gets an implementation whose collectives are identities, so the
// same training code runs with and without a launcher.
//
// Failures never hang silently: every collective waits at most the configured timeout, and a
// failed one throws moelab::Error naming the rank that died or stopped (see communicator.cpp for
// how the culprit is found), after which world_failed() is true.
#pragma once
#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "moelab/comm/launch_environment.h"

namespace moelab {

// Volume and wall time of one kind of collective ("all_to_all", "all_reduce", ...), summed.
struct CollectiveTally {
  int64_t calls = 0;
  int64_t bytes_sent = 0;  // bytes this rank handed to the collective (payload, not wire traffic)
  double seconds = 0;      // wall time from the call until the result is ready here
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // "single", "gloo" or "nccl".
  virtual std::string backend() const = 0;
  // The device collectives take their tensors on (CPU for Gloo, the rank's GPU for NCCL).
  virtual torch::Device device() const = 0;

  // In place: every rank ends with the elementwise sum over ranks.
  virtual void all_reduce_sum(torch::Tensor& tensor) = 0;
  // Every rank's `tensor` (same shape on all ranks), in rank order.
  virtual std::vector<torch::Tensor> all_gather(const torch::Tensor& tensor) = 0;
  // input's rows [sum(send_rows), ...] go out in consecutive blocks, send_rows[r] to rank r; the
  // result holds recv_rows[r] rows from each rank r, in rank order. Zero-row blocks are allowed.
  virtual torch::Tensor all_to_all(const torch::Tensor& input, const std::vector<int64_t>& send_rows,
                                   const std::vector<int64_t>& recv_rows) = 0;
  // In place: every rank ends with root's tensor.
  virtual void broadcast(torch::Tensor& tensor, int root) = 0;
  virtual void barrier() = 0;

  // Per kind of collective, since the process started (or reset_tallies()).
  const std::map<std::string, CollectiveTally>& tallies() const { return tallies_; }
  void reset_tallies() { tallies_.clear(); }

 protected:
  std::map<std::string, CollectiveTally> tallies_;
};

// The communicator of a process without a launcher: rank 0 of 1.
std::shared_ptr<Communicator> single_process_communicator();

// Joins the group the launcher describes: a TCP store rendezvous at MASTER_ADDR:MASTER_PORT (rank 0
// hosts it), then a Gloo process group, or NCCL when `device` is a CUDA device and LibTorch was
// built with it. Throws Error when the rendezvous does not complete within `timeout`, naming the
// address and how many ranks arrived.
std::shared_ptr<Communicator> connect_process_group(const LaunchEnvironment& launch, std::chrono::milliseconds timeout,
                                                    torch::Device device = torch::kCPU);

// Whether this moelab was built with a multi-process backend (Gloo headers found at build time).
bool distributed_backend_available();

// The process-wide group training uses, like torch.distributed's default group: the single-process
// one until set_world() installs another.
std::shared_ptr<Communicator> world();
void set_world(std::shared_ptr<Communicator> communicator);
// True once a collective has failed in this process. The process group may then be unusable (its
// destructor can block on the dead peer), so the CLI exits without running destructors.
bool world_failed();
void mark_world_failed();

// Sum over ranks of a CPU double vector, through the communicator's device.
std::vector<double> sum_over_ranks(Communicator& communicator, const std::vector<double>& values);
// Every rank's tensor concatenated along `dim`, in rank order (equal shapes on every rank).
torch::Tensor all_gather_cat(Communicator& communicator, const torch::Tensor& tensor, int64_t dim);
// Rank r's share [first, first + count) when `total` items are split over `world` ranks as evenly
// as possible, earlier ranks taking the remainder.
std::pair<int64_t, int64_t> even_share(int64_t total, int rank, int world);

}  // namespace moelab
