#include "engine/group_communicator.h"

namespace cserve {

std::unique_ptr<Communicator> make_group_communicator(const EngineConfig& c, const std::string& name, int rank,
                                                      int size, bool world_group) {
  if (c.tensor_parallel_store.empty())
    return make_shm_communicator(name, rank, size, c.tensor_parallel_timeout);
  return make_gloo_communicator(c.tensor_parallel_store, name, rank, size, c.tensor_parallel_timeout,
                                /*host_store=*/world_group);
}

}  // namespace cserve
