// Python bindings of the fused StyleGAN2 ops; fsg_ray/nets/cuda_ops.py builds and wraps them.
#include <torch/extension.h>

at::Tensor bias_leaky_relu(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& ref, double slope,
                           double gain);
at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& kernel, int64_t up, int64_t down, int64_t pad_x0,
                     int64_t pad_x1, int64_t pad_y0, int64_t pad_y1);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_leaky_relu", &bias_leaky_relu, "(x + bias) -> leaky-ReLU -> * gain; sign from ref when given",
          py::arg("x"), py::arg("bias"), py::arg("ref"), py::arg("slope"), py::arg("gain"));
    m.def("upfirdn2d", &upfirdn2d, "upsample by zero insertion, pad, convolve, downsample", py::arg("x"),
          py::arg("kernel"), py::arg("up"), py::arg("down"), py::arg("pad_x0"), py::arg("pad_x1"),
          py::arg("pad_y0"), py::arg("pad_y1"));
}
