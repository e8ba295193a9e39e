//! Checkpoints: everything needed to continue a run exactly, written atomically.
//!
//! In: the model's trainable weights, the optimiser's moments and the trainer's state. Out:
//! `OUT/checkpoint-STEP/` holding `model/` (the model in Hugging Face layout, or the PEFT
//! adapter for LoRA), `trainable.safetensors` (the exact f32 trainable weights, by name),
//! `optimizer.safetensors` (AdamW moments) and `trainer_state.json` (step, data-loader
//! position, counters, seed). A checkpoint is built in `OUT/.tmp-checkpoint-STEP` and renamed
//! into place only when complete, so a killed run never leaves a half checkpoint behind.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::data::{DataStats, Position};

/// Errors of checkpoint handling; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("{path}: {source}")]
    Candle { path: PathBuf, source: candle_core::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// The trainer's own state in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    /// The data loader's position after `step`.
    pub position: Position,
    pub tokens_seen: u64,
    pub target_tokens_seen: u64,
    /// Wall-clock seconds spent training before this checkpoint.
    pub wall_s: f64,
    pub data: DataStats,
    pub seed: u64,
    /// The train loss of the last step.
    pub last_loss: Option<f64>,
    /// The last validation loss.
    pub last_eval_loss: Option<f64>,
    /// The trainable parameters' names (a guard against resuming another setup).
    pub params: Vec<String>,
}

/// The directory name of the checkpoint after `step` steps.
pub fn dir_name(step: u64) -> String {
    format!("checkpoint-{step}")
}

/// The checkpoints under `out`, oldest first (by step).
pub fn list(out: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(out) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io(out)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(out))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(step) = name.strip_prefix("checkpoint-").and_then(|s| s.parse::<u64>().ok())
            && entry.path().join("trainer_state.json").is_file()
        {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint under `out`.
pub fn latest(out: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    Ok(list(out)?.pop().map(|(_, p)| p))
}

/// Writes a checkpoint atomically: `fill` writes into a temp dir, which is then renamed to
/// `out/checkpoint-STEP` (replacing an older one of the same step). Keeps the newest `keep`
/// checkpoints (0: all).
pub fn write(
    out: &Path,
    step: u64,
    keep: usize,
    fill: impl FnOnce(&Path) -> Result<(), CheckpointError>,
) -> Result<PathBuf, CheckpointError> {
    fs::create_dir_all(out).map_err(io(out))?;
    let tmp = out.join(format!(".tmp-{}", dir_name(step)));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    fill(&tmp)?;
    sync_dir(&tmp);
    let dst = out.join(dir_name(step));
    if dst.exists() {
        fs::remove_dir_all(&dst).map_err(io(&dst))?;
    }
    fs::rename(&tmp, &dst).map_err(io(&dst))?;
    sync_dir(out);
    if keep > 0 {
        let all = list(out)?;
        for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
            fs::remove_dir_all(old).map_err(io(old))?;
        }
    }
    Ok(dst)
}

fn sync_dir(dir: &Path) {
    // Best effort: a directory fsync makes the rename durable on Linux; not all systems allow it.
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Writes `trainer_state.json`.
pub fn save_state(dir: &Path, state: &TrainerState) -> Result<(), CheckpointError> {
    let path = dir.join("trainer_state.json");
    let text = serde_json::to_string_pretty(state)
        .map_err(|e| CheckpointError::Invalid { path: path.clone(), msg: e.to_string() })?;
    fs::write(&path, text).map_err(io(&path))
}

/// Reads `trainer_state.json`.
pub fn load_state(dir: &Path) -> Result<TrainerState, CheckpointError> {
    let path = dir.join("trainer_state.json");
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::Invalid { path, msg: e.to_string() })
}

/// Writes the trainable weights exactly (f32, by name) to `trainable.safetensors`.
pub fn save_trainable(dir: &Path, vars: &[(String, Var)]) -> Result<(), CheckpointError> {
    let path = dir.join("trainable.safetensors");
    let map: HashMap<String, Tensor> = vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    candle_core::safetensors::save(&map, &path).map_err(|source| CheckpointError::Candle { path, source })
}

/// Sets the trainable weights from `trainable.safetensors`; every one must be there with its shape.
pub fn load_trainable(dir: &Path, vars: &[(String, Var)]) -> Result<(), CheckpointError> {
    let path = dir.join("trainable.safetensors");
    let cerr = |source| CheckpointError::Candle { path: path.clone(), source };
    let map = candle_core::safetensors::load(&path, &Device::Cpu).map_err(cerr)?;
    for (name, var) in vars {
        let t = map.get(name).ok_or_else(|| CheckpointError::Invalid {
            path: path.clone(),
            msg: format!("no weight {name}: this checkpoint was written for another model or LoRA setting"),
        })?;
        if t.shape() != var.shape() {
            return Err(CheckpointError::Invalid {
                path: path.clone(),
                msg: format!("{name} has shape {:?}, the model has {:?}", t.shape(), var.shape()),
            });
        }
        let t = t.to_dtype(var.dtype()).and_then(|t| t.to_device(var.device())).map_err(cerr)?;
        var.set(&t).map_err(cerr)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_keeps_the_last_k_and_finds_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        for step in [5u64, 10, 15, 20] {
            write(out, step, 2, |tmp| {
                fs::write(tmp.join("x"), step.to_string()).unwrap();
                save_state(tmp, &state(step))
            })
            .unwrap();
        }
        let steps: Vec<u64> = list(out).unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, vec![15, 20]);
        assert_eq!(latest(out).unwrap().unwrap(), out.join("checkpoint-20"));
        assert_eq!(load_state(&out.join("checkpoint-20")).unwrap(), state(20));
        // A failing writer leaves the previous checkpoints as they were and no new one.
        let e = write(out, 25, 2, |_| Err(CheckpointError::Invalid { path: "x".into(), msg: "boom".into() }));
        assert!(e.is_err());
        assert_eq!(latest(out).unwrap().unwrap(), out.join("checkpoint-20"));
        assert_eq!(fs::read_to_string(out.join("checkpoint-20/x")).unwrap(), "20");
    }

    fn state(step: u64) -> TrainerState {
        TrainerState {
            step,
            position: Position { epoch: 1, index: step * 3 },
            tokens_seen: step * 100,
            target_tokens_seen: step * 50,
            wall_s: 1.5,
            data: DataStats::default(),
            seed: 3,
            last_loss: Some(2.5),
            last_eval_loss: None,
            params: vec!["w".into()],
        }
    }

    #[test]
    fn trainable_weights_round_trip_and_refuse_other_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let a = Var::from_tensor(&Tensor::new(&[1.5f32, -2.25, 1e-7], &Device::Cpu).unwrap()).unwrap();
        save_trainable(dir.path(), &[("a".into(), a.clone())]).unwrap();
        let b = Var::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
        load_trainable(dir.path(), &[("a".into(), b.clone())]).unwrap();
        assert_eq!(b.as_tensor().to_vec1::<f32>().unwrap(), vec![1.5, -2.25, 1e-7]);
        let c = Var::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = load_trainable(dir.path(), &[("a".into(), c)]).unwrap_err().to_string();
        assert!(e.contains("shape") && e.contains("trainable.safetensors"), "{e}");
        let e = load_trainable(dir.path(), &[("zz".into(), b)]).unwrap_err().to_string();
        assert!(e.contains("no weight zz"), "{e}");
    }
}
