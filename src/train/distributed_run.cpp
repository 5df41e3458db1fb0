#include "moelab/train/distributed_run.h"

#include <chrono>
#include <exception>

#include "moelab/device/device.h"

namespace moelab {

DistributedRun::DistributedRun(const Config& config) : launch_(LaunchEnvironment::from_environment()) {
  if (!launch_.distributed()) {
    communicator_ = single_process_communicator();
  } else {
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(config.get_float("train.dist_timeout") * 1000));
    // NCCL for a run on GPUs, Gloo on the CPU.
    const auto device = device_for_process(config.get_string("train.device"), launch_.local_rank);
    communicator_ = connect_process_group(launch_, timeout, device);
  }
  set_world(communicator_);
}

DistributedRun::~DistributedRun() {
  bool usable = !world_failed();
  // On the way out of an error another rank may not share, no barrier: it could pair with a
  // different collective on the other side. The peers learn of this rank's exit from their next one.
  if (usable && launch_.distributed() && std::uncaught_exceptions() == 0) {
    try {
      communicator_->barrier();  // nobody tears down the group while a peer still uses it
    } catch (const std::exception&) {
      usable = false;
    }
  }
  if (!usable) new std::shared_ptr<Communicator>(communicator_);  // intentionally never released, see the header
  set_world(single_process_communicator());
}

}  // namespace moelab
