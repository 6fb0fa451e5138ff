// attnkit — one include for CPU users: every front door, mask, backend tag and executor.
//
//   #include <attnkit/attnkit.hpp>
//   attnkit::attention(attnkit::cpu, q, k, v, out, attnkit::causal{});
//
// CUDA users include <attnkit/cuda.cuh> from files compiled by nvcc.
#pragma once

#include "attnkit/attention/attention.hpp"
#include "attnkit/attention/key_mass.hpp"
#include "attnkit/attention/merge_states.hpp"
#include "attnkit/attention/moba.hpp"
#include "attnkit/attention/quest.hpp"
#include "attnkit/backend/tags.hpp"
#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/observer.hpp"
#include "attnkit/core/options.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/softmax_state.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/mask/block_patterns.hpp"
#include "attnkit/mask/block_sparse.hpp"
#include "attnkit/mask/causal.hpp"
#include "attnkit/mask/custom.hpp"
#include "attnkit/mask/full.hpp"
#include "attnkit/mask/intersection.hpp"
#include "attnkit/mask/sliding_window.hpp"
#include "attnkit/mask/tile.hpp"
#include "attnkit/parallel/executor.hpp"
#include "attnkit/parallel/thread_pool.hpp"
