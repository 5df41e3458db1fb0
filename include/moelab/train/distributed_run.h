// A training process's membership in the launcher's group, for the length of one run: joins it
// when WORLD_SIZE > 1 (installing it as world()), and leaves it at the end. After a failed
// collective the group is deliberately kept alive until the process exits: destroying it would
// wait on the dead peer.
#pragma once
#include <memory>

#include "moelab/config/config.h"
#include "moelab/comm/communicator.h"
#include "moelab/comm/launch_environment.h"

namespace moelab {

class DistributedRun {
 public:
  // Reads the launcher's variables; train.dist_timeout bounds the rendezvous and every collective.
  explicit DistributedRun(const Config& config);
  ~DistributedRun();
  DistributedRun(const DistributedRun&) = delete;
  DistributedRun& operator=(const DistributedRun&) = delete;

  const LaunchEnvironment& launch() const { return launch_; }
  const std::shared_ptr<Communicator>& communicator() const { return communicator_; }
  int rank() const { return launch_.rank; }
  int world_size() const { return launch_.world_size; }
  bool lead() const { return launch_.rank == 0; }  // the rank that writes the run directory

 private:
  LaunchEnvironment launch_;
  std::shared_ptr<Communicator> communicator_;
};

}  // namespace moelab
