//! Test c: layers [0,10), [10,20), [20,30) run by three executors in sequence give the same
//! hidden states as [0,30) in one executor, bit for bit, on each backend.

use ait_tests::default_model;
use relay::local::{BackendKind, LocalModel};
use web_node::client::LayerChain;
use web_node::model::ModelFile;

fn hidden_states(model: &mut LocalModel, prompt: &[u32], decode: &[u32]) -> Vec<Vec<f32>> {
    pollster::block_on(async {
        model.chain.begin(prompt.len() + decode.len()).await.expect("begin");
        let mut outs = vec![model
            .chain
            .forward(&model.client.head.embed(prompt).expect("embed"), prompt.len())
            .await
            .expect("prefill")];
        for &t in decode {
            outs.push(model.chain.forward(&model.client.head.embed(&[t]).expect("embed"), 1).await.expect("decode"));
        }
        model.chain.end().await.expect("end");
        outs
    })
}

#[test]
fn three_way_split_equals_whole_bit_for_bit() {
    let file = ModelFile::open(&default_model()).expect("model opens");
    for kind in [BackendKind::Cpu, BackendKind::Wgpu] {
        let mut whole = LocalModel::from_file(&file, kind, None).expect("whole");
        let mut split = LocalModel::from_file(&file, kind, Some(vec![0..10, 10..20, 20..30])).expect("split");
        assert_eq!(split.chain.executors().len(), 3);
        let prompt = whole.client.encode("The quick brown fox jumps over the lazy dog because").expect("tok");
        let decode = [12u32, 345, 6789, 42];
        let a = hidden_states(&mut whole, &prompt, &decode);
        let b = hidden_states(&mut split, &prompt, &decode);
        for (step, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x.len(), y.len());
            let bits_x: Vec<u32> = x.iter().map(|v| v.to_bits()).collect();
            let bits_y: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
            if let Some(i) = bits_x.iter().zip(&bits_y).position(|(p, q)| p != q) {
                panic!("{}: step {step}: value {i} differs: {} vs {}", kind.name(), x[i], y[i]);
            }
        }
    }
}
