"""The floor a training has to beat: a randomly initialised encoder, probed.

Builds BACKBONE at SIZE pixels with random weights, computes its BatchNorm
statistics over the training images (precise BN, no weight change), then measures
the kNN accuracy of its features and fits the library's linear probe on them
(L-BFGS on cached features, C chosen on validation). docs/experiments.md, section 2.

    python experiments/random_encoder.py resnet50 32
    python experiments/random_encoder.py small_resnet 32 --dataset digits
"""

import argparse
from pathlib import Path

DATASET = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_subset.npz")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("backbone")
    p.add_argument("image_size", type=int)
    p.add_argument("--dataset", default=DATASET)
    p.add_argument("--out", default="runs/random_encoder")
    args = p.parse_args(argv)

    import keras

    from keras_supcon import data, models
    from keras_supcon.evaluation import embedding_metrics, predict
    from keras_supcon.training import fine_tune_linear

    keras.utils.set_random_seed(0)
    splits = data.load_dataset(args.dataset)
    size = args.image_size
    encoder = models.set_batchnorm_momentum(models.build_encoder(args.backbone, size), 0.9)
    models.precise_batchnorm(encoder, data.supervised_batches(splits.train, size, 64, shuffle=True),
                             max_batches=50)
    test_emb, test_y = predict(encoder, data.supervised_batches(splits.test, size, 256))
    train_emb, train_y = predict(encoder, data.supervised_batches(splits.train, size, 256))
    knn = embedding_metrics(train_emb, train_y, test_emb, test_y)["knn_accuracy"]
    _, metrics = fine_tune_linear(encoder, splits, out=f"{args.out}/{args.backbone}",
                                  overwrite=True, verbose=0)
    print(f"RESULT {args.backbone} random init: probe accuracy {metrics['accuracy']:.4f}, "
          f"kNN {knn:.4f}")


if __name__ == "__main__":
    main()
