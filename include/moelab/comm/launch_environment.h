// Where this process sits in a multi-process job, read from the variables standard launchers set:
// torchrun (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and, where
// those are absent, Slurm's srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE;
// MASTER_ADDR must still name the rank-0 host). With none of them the process is rank 0 of 1.
#pragma once
#include <cstdint>
#include <string>

namespace moelab {

struct LaunchEnvironment {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;  // processes on this machine (they share its cores)
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string launcher = "none";  // "none", "torchrun" (or any launcher setting RANK) or "slurm"

  bool distributed() const { return world_size > 1; }
  // Throws Error for malformed or inconsistent values (rank outside [0, world), bad port, ...).
  static LaunchEnvironment from_environment();
};

}  // namespace moelab
