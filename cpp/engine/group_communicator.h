// The communicator of one of the engine's parallel groups, by EngineConfig::tensor_parallel_store:
// shared memory on one host (empty), or gloo over TCP ("host:port").
#pragma once
#include <memory>
#include <string>

#include "comm/communicator.h"
#include "cserve/engine_config.h"

namespace cserve {

// `name`: the group's shm segment name, or its gloo prefix. The world group (all ranks of the
// engine) is made first in every rank process; its rank 0 (the engine's process) serves the gloo
// store, which the subgroups made later (-tp x -pp) use too.
std::unique_ptr<Communicator> make_group_communicator(const EngineConfig& config, const std::string& name, int rank,
                                                      int size, bool world_group);

}  // namespace cserve
