#include "moelab/comm/launch_environment.h"

#include <cstdlib>
#include <optional>

#include "moelab/util/error.h"

namespace moelab {

namespace {

std::optional<std::string> variable(const char* name) {
  const char* value = std::getenv(name);
  if (!value || !*value) return std::nullopt;
  return std::string(value);
}

int integer_variable(const char* name, const std::string& text) {
  try {
    size_t used = 0;
    const int value = std::stoi(text, &used);
    if (used != text.size()) throw std::invalid_argument(text);
    return value;
  } catch (const std::exception&) {
    fail("environment variable {}='{}' is not an integer", name, text);
  }
}

int integer_or(const char* name, int fallback) {
  const auto text = variable(name);
  return text ? integer_variable(name, *text) : fallback;
}

}  // namespace

LaunchEnvironment LaunchEnvironment::from_environment() {
  LaunchEnvironment launch;
  if (variable("RANK") || variable("WORLD_SIZE")) {
    launch.launcher = "torchrun";
    launch.rank = integer_or("RANK", 0);
    launch.world_size = integer_or("WORLD_SIZE", 1);
    launch.local_rank = integer_or("LOCAL_RANK", launch.rank);
    launch.local_world_size = integer_or("LOCAL_WORLD_SIZE", launch.world_size);
  } else if (variable("SLURM_PROCID") && variable("SLURM_NTASKS")) {
    launch.launcher = "slurm";
    launch.rank = integer_or("SLURM_PROCID", 0);
    launch.world_size = integer_or("SLURM_NTASKS", 1);
    launch.local_rank = integer_or("SLURM_LOCALID", 0);
    // "4" or "4(x2)" (tasks per node, node count); the leading number is what this node runs.
    const auto per_node = variable("SLURM_NTASKS_PER_NODE");
    launch.local_world_size = per_node ? integer_variable("SLURM_NTASKS_PER_NODE", per_node->substr(0, per_node->find('('))) : 1;
    if (launch.world_size > 1 && !variable("MASTER_ADDR"))
      fail("running under Slurm with {} tasks: set MASTER_ADDR to the host of task 0 (and MASTER_PORT)",
           launch.world_size);
  }
  if (const auto addr = variable("MASTER_ADDR")) launch.master_addr = *addr;
  launch.master_port = integer_or("MASTER_PORT", launch.master_port);
  if (launch.world_size < 1) fail("WORLD_SIZE must be >= 1, got {}", launch.world_size);
  if (launch.rank < 0 || launch.rank >= launch.world_size)
    fail("RANK {} is outside [0, WORLD_SIZE = {})", launch.rank, launch.world_size);
  if (launch.local_world_size < 1) launch.local_world_size = 1;
  if (launch.master_port <= 0 || launch.master_port > 65535)
    fail("MASTER_PORT must be in [1, 65535], got {}", launch.master_port);
  return launch;
}

}  // namespace moelab
