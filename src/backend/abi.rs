//! The constants the CUDA kernels and the Rust host share, written once, here. build.rs compiles this
//! file as well and writes every constant into the header `ltrain_abi.cuh` that kernels/common.cuh
//! includes, so a kernel and its launcher cannot disagree. The file is self-contained (std only, no
//! `crate::` paths) for that reason.

/// One constant of the generated CUDA header.
pub struct SharedConstant {
    pub name: &'static str,
    pub value: u64,
    /// The Rust type: `u32` constants get a `u` suffix in C.
    pub ty: &'static str,
    pub doc: &'static str,
}

/// Declares `pub const NAME: TYPE = VALUE;` items and lists them all in [`SHARED`].
macro_rules! shared_constants {
    ($( $(#[doc = $doc:literal])* $name:ident: $ty:ident = $value:expr; )*) => {
        $( $(#[doc = $doc])* pub const $name: $ty = $value; )*
        /// Every constant above, for the generated header.
        pub const SHARED: &[SharedConstant] = &[$(SharedConstant {
            name: stringify!($name),
            value: $value as u64,
            ty: stringify!($ty),
            doc: concat!($($doc),*),
        }),*];
    };
}

shared_constants! {
    // ---- launches ----
    /// Threads per block a kernel declared without `__launch_bounds__(N)` may be launched with
    /// (checked before every launch); a kernel launched with more declares them, so that nvcc keeps
    /// its registers within what that many threads can have.
    DEFAULT_MAX_THREADS: u32 = 256;

    // ---- the tensor-core convolutions (kernels/conv_mma.cu) ----
    /// Depth of a pipeline stage's K step; the compiled-filter kernels need the channels their K
    /// runs over to be a multiple of it.
    CONV_MMA_BK: usize = 16;
    /// Threads of a tensor-core convolution block: 4 warps of two m16 fragments, so a tile has as
    /// many rows as the block has threads (each thread gathers one row).
    CONV_MMA_THREADS: usize = 128;
    /// Threads of the 3x3 weight gradient: 9 warps of one m16 fragment, 144 rows (16 input channels
    /// x 9 taps, so that 9 c_in rows fill whole tiles), two threads a row.
    CONV_MMA_THREADS_K3_WEIGHT: usize = 288;
    /// Floats a channel's halo may take in the row-tile kernels (a 3x3 stride-1 forward or data
    /// gradient over whole output rows): 204 for 32 x 32 positions; 216 = 24 mod 32 keeps their
    /// fragment reads free of bank conflicts.
    CONV_MMA_ROWS_HALO_PITCH: usize = 216;

    // ---- the packed augmentation parameters (layout: src/backend/augment_params.rs) ----
    /// `f32` words of one sample's packed row.
    PARAM_WORDS: usize = 34;
    /// Most taps of a packed Gaussian blur kernel.
    MAX_BLUR_TAPS: usize = 7;
    /// Word: the geometry code (`GEOMETRY_*`); words 1..=4 its integers.
    P_GEOMETRY: usize = 0;
    /// Word: horizontal flip (0 or 1).
    P_FLIP: usize = 5;
    /// Word: colour jitter on.
    P_JITTER_ON: usize = 6;
    /// Words: the four jitter ops in the order they apply (`JITTER_*`).
    P_JITTER_ORDER: usize = 7;
    /// Word: brightness factor.
    P_BRIGHTNESS: usize = 11;
    /// Word: contrast factor.
    P_CONTRAST: usize = 12;
    /// Word: saturation factor.
    P_SATURATION: usize = 13;
    /// Word: hue on.
    P_HUE_ON: usize = 14;
    /// Word: hue shift (turns).
    P_HUE: usize = 15;
    /// Word: grayscale.
    P_GRAYSCALE: usize = 16;
    /// Word: blur kernel size (0: no blur).
    P_BLUR_SIZE: usize = 17;
    /// Word: blur sigma.
    P_BLUR_SIGMA: usize = 18;
    /// Words: the blur taps (`MAX_BLUR_TAPS` of them).
    P_BLUR_TAPS: usize = 19;
    /// Words: AutoAugment op 0: kind (`AUTO_*`, negative: none), signed magnitude, sin, cos.
    P_AUTO0: usize = 26;
    /// Words: AutoAugment op 1, the same four words.
    P_AUTO1: usize = 30;
    /// Geometry code: the image as it is.
    GEOMETRY_IDENTITY: i32 = 0;
    /// Geometry code: zero-padded crop (`pad, top, left`).
    GEOMETRY_PAD_CROP: i32 = 1;
    /// Geometry code: resized crop (`top, left, h, w`).
    GEOMETRY_RESIZED_CROP: i32 = 2;
    /// Jitter op codes of `P_JITTER_ORDER`.
    JITTER_BRIGHTNESS: i32 = 0;
    JITTER_CONTRAST: i32 = 1;
    JITTER_SATURATION: i32 = 2;
    JITTER_HUE: i32 = 3;
    /// AutoAugment op codes.
    AUTO_SHEAR_X: i32 = 0;
    AUTO_SHEAR_Y: i32 = 1;
    AUTO_TRANSLATE_X: i32 = 2;
    AUTO_TRANSLATE_Y: i32 = 3;
    AUTO_ROTATE: i32 = 4;
    AUTO_COLOR: i32 = 5;
    AUTO_POSTERIZE: i32 = 6;
    AUTO_SOLARIZE: i32 = 7;
    AUTO_CONTRAST: i32 = 8;
    AUTO_SHARPNESS: i32 = 9;
    AUTO_BRIGHTNESS: i32 = 10;
    AUTO_AUTOCONTRAST: i32 = 11;
    AUTO_EQUALIZE: i32 = 12;
    AUTO_INVERT: i32 = 13;
    /// `u32` words of one `augment_batch` block's histogram / reduction scratch in shared memory.
    AUGMENT_SCRATCH_WORDS: usize = 3 * 256 + 8;

    // ---- the fused loss ----
    /// Weighting code: class weights (unit weights when the weight buffer is absent).
    WEIGHT_PER_CLASS: i32 = 0;
    /// Weighting code: focal loss.
    WEIGHT_FOCAL: i32 = 1;
    /// Weighting code: SLA.
    WEIGHT_SLA: i32 = 2;

    // ---- the error record ----
    /// `u32` words of the backend's device-side error record: `[code, position, value, detail]` of
    /// the first error raised since the host last read it (code 0: none).
    ERROR_RECORD_WORDS: usize = 4;
}

/// How the words of an error record read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// `what[position] = value` is out of range: `value >= detail`.
    IndexOutOfRange,
    /// Word `value` of the packed parameter row `position` is malformed; `detail` holds the word's
    /// `f32` bits.
    MalformedParams,
}

/// An error a kernel can raise: its code and what the message names.
pub struct KernelError {
    pub name: &'static str,
    pub code: u32,
    /// The op that raised it.
    pub op: &'static str,
    /// The offending argument.
    pub what: &'static str,
    pub kind: ErrorKind,
}

impl KernelError {
    /// The message, the same for every backend (the CPU backend checks on the host).
    pub fn message(&self, position: u64, value: u64, detail: u64) -> String {
        let (op, what) = (self.op, self.what);
        match self.kind {
            ErrorKind::IndexOutOfRange => {
                format!("{op}: `{what}`[{position}] = {value} is out of range (must be < {detail})")
            }
            ErrorKind::MalformedParams => format!(
                "{op}: `{what}` row {position} is malformed: word {value} = {}",
                f32::from_bits(detail as u32)
            ),
        }
    }
}

/// Declares the `ERR_*` codes (from 1) and lists them in [`KERNEL_ERRORS`].
macro_rules! kernel_errors {
    ($( $(#[doc = $doc:literal])* $name:ident = $code:literal => $kind:ident($op:literal, $what:literal), )*) => {
        $( $(#[doc = $doc])* pub const $name: u32 = $code; )*
        /// Every error a kernel raises.
        pub const KERNEL_ERRORS: &[KernelError] = &[$(KernelError {
            name: stringify!($name),
            code: $code,
            op: $op,
            what: $what,
            kind: ErrorKind::$kind,
        }),*];
    };
}

kernel_errors! {
    ERR_LOSS_TARGET = 1 => IndexOutOfRange("fused_loss", "targets"),
    ERR_LOSS_TARGET_B = 2 => IndexOutOfRange("fused_loss", "mixed targets b"),
    ERR_COSINE_LABEL = 3 => IndexOutOfRange("row_cosine", "labels"),
    ERR_COSMAX_LABEL = 4 => IndexOutOfRange("cosmax_update", "labels"),
    ERR_MIXUP_PERM = 5 => IndexOutOfRange("mixup", "perm"),
    ERR_AUGMENT_INDEX = 6 => IndexOutOfRange("augment_batch", "indices"),
    ERR_AUGMENT_PARAMS = 7 => MalformedParams("augment_batch", "params"),
    ERR_GATHER_INDEX = 8 => IndexOutOfRange("gather_rows", "idx"),
    ERR_SLA_WEIGHTS_LABEL = 9 => IndexOutOfRange("sla_weights", "labels"),
    ERR_XENT_LABEL = 10 => IndexOutOfRange("softmax_xent_backward", "labels"),
}

/// The message of the error record `[code, position, value, detail]`.
pub fn error_message(code: u32, position: u64, value: u64, detail: u64) -> String {
    match KERNEL_ERRORS.iter().find(|e| e.code == code) {
        Some(e) => e.message(position, value, detail),
        None => format!("a kernel raised the unknown error code {code}"),
    }
}

/// The C header of every constant (`#define NAME VALUE`), as build.rs writes it.
pub fn cuda_header() -> String {
    let mut s = String::from(
        "// @generated by build.rs from src/backend/abi.rs: the constants kernels and host share.\n\
         // Do not edit; change src/backend/abi.rs.\n#pragma once\n",
    );
    for c in SHARED {
        if !c.doc.is_empty() {
            s.push_str(&format!("//{}\n", c.doc));
        }
        let suffix = if c.ty == "u32" { "u" } else { "" };
        s.push_str(&format!("#define {} {}{suffix}\n", c.name, c.value));
    }
    s.push_str("// Error codes of the error record (`raise_error`).\n");
    for e in KERNEL_ERRORS {
        s.push_str(&format!(
            "#define {} {}u  // {}: `{}`\n",
            e.name, e.code, e.op, e.what
        ));
    }
    s
}
