// SGD with PyTorch semantics (dampening 0):
//   g = grad + wd * p;  v = momentum * v + g;  step = nesterov ? g + momentum * v : v;  p -= lr * step.
#include "common.cuh"

KERNEL void sgd_step(float* __restrict__ param, const float* __restrict__ grad,
                     float* __restrict__ velocity, float lr, float momentum, float weight_decay,
                     int nesterov, unsigned n) {
    for (unsigned i = global_thread(); i < n; i += grid_threads()) {
        const float g = grad[i] + weight_decay * param[i];
        const float v = momentum * velocity[i] + g;
        velocity[i] = v;
        param[i] -= lr * (nesterov ? g + momentum * v : v);
    }
}
