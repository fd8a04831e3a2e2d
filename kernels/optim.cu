// SGD with PyTorch semantics (dampening 0):
//   g = grad + wd * p;  v = momentum * v + g;  step = nesterov ? g + momentum * v : v;  p -= lr * step.
// lr [1] on the device (it changes over the run; a captured step reads the replay's).
#include "common.cuh"

KERNEL void sgd_step(float* __restrict__ param, const float* __restrict__ grad,
                     float* __restrict__ velocity, const float* __restrict__ lr_dev,
                     float momentum, float weight_decay, int nesterov, unsigned n) {
    const float lr = lr_dev[0];
    for (unsigned i = global_thread(); i < n; i += grid_threads()) {
        const float g = grad[i] + weight_decay * param[i];
        const float v = momentum * velocity[i] + g;
        velocity[i] = v;
        param[i] -= lr * (nesterov ? g + momentum * v : v);
    }
}
