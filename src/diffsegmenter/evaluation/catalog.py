"""What each benchmark is: its class names (standard and the paper's renames), colours, names and aliases, and how
to prepare its files. [`~diffsegmenter.evaluation.datasets.load_dataset`] reads the files."""

from __future__ import annotations

from ..shapes import CLASS_NAMES as SHAPES_CLASS_NAMES

# --------------------------------------------------------------------------------------------------------------------
# Class vocabularies. "standard" = mmsegmentation / dataset names; "paper" = the names the DiffSegmenter release prompts
# with (only VOC, PASCAL Context and COCO-Object have renames). Both are always accepted as aliases by `class_index`.
# --------------------------------------------------------------------------------------------------------------------

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
VOC_PAPER_RENAMES = {
    "aeroplane": "plane", "bus": "buses", "diningtable": "table", "person": "people", "pottedplant": "plant",
    "tvmonitor": "monitor",
}  # fmt: skip

PC59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building", "bus",
    "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door", "fence",
    "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow",
    "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip
# DiffSegmenter's `open_vocabulary/voc10` vocabulary.
PC_PAPER_RENAMES = {"aeroplane": "airplane", "pottedplant": "plant", "tvmonitor": "monitor"}

COCO_THINGS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
# DiffSegmenter's `open_vocabulary/coco` vocabulary uses VOC-style names; its typo "toothbrus" is fixed here but still
# accepted as an alias (it appears in the released candidate JSON).
COCO_PAPER_RENAMES = {
    "motorcycle": "motorbike", "airplane": "aeroplane", "couch": "sofa", "potted plant": "pottedplant",
    "dining table": "diningtable", "tv": "tvmonitor",
}  # fmt: skip
COCO_EXTRA_ALIASES = {"toothbrus": "toothbrush"}

COCO_STUFF = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower",
    "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock",
    "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops",
    "window-blind", "window-other", "wood",
)  # fmt: skip

ADE_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock",
    "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers",
    "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway",
    "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall",
    "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase",
    "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower",
    "radiator", "glass", "clock", "flag",
)  # fmt: skip

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation", "terrain",
    "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153), (250, 170, 30),
    (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142),
    (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

SHAPES_CLASSES = SHAPES_CLASS_NAMES

DATASET_NAMES = ("voc21", "voc20", "pc60", "pc59", "object", "stuff", "ade", "city", "shapes")
DATASET_ALIASES = {
    "voc": "voc21", "voc12": "voc21", "context": "pc60", "pc": "pc60", "coco-object": "object", "coco_object": "object",
    "coco-stuff": "stuff", "coco_stuff": "stuff", "ade20k": "ade", "ade150": "ade", "cityscapes": "city",
}  # fmt: skip

_MMSEG_PREP = "https://mmsegmentation.readthedocs.io/en/latest/user_guides/2_dataset_prepare.html"
PREPARE_HINTS = {
    "voc": (
        "Download VOCtrainval_11-May-2012.tar from the PASCAL VOC 2012 site and extract it so that "
        "VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation} exist (optionally add "
        f"SegmentationClassAug with mmseg's tools/dataset_converters/voc_aug.py). See {_MMSEG_PREP}"
    ),
    "pc": (
        "Extract VOCtrainval_03-May-2010.tar (VOCdevkit/VOC2010) and convert the PASCAL-Context annotations "
        "(trainval_merged.json) with mmseg's tools/dataset_converters/pascal_context.py, which writes "
        f"VOC2010/SegmentationClassContext and VOC2010/ImageSets/SegmentationContext/{{train,val}}.txt. See {_MMSEG_PREP}"
    ),
    "object": (
        "Prepare COCO-Stuff-164k as in mmseg (images/val2017 + annotations/val2017 from stuffthingmaps_trainval2017.zip), "
        "then write the 81-class object labels <id>_instanceTrainIds.png (0 = background, 1..80 = COCO things) with the "
        "cvt_coco_object.py converter shipped by SCLIP / NACLIP / ProxyCLIP (datasets/cvt_coco_object.py). "
        f"See docs/evaluation.md and {_MMSEG_PREP}"
    ),
    "stuff": (
        "Prepare COCO-Stuff-164k with mmseg's tools/dataset_converters/coco_stuff164k.py, which writes "
        f"annotations/val2017/<id>_labelTrainIds.png next to images/val2017. See {_MMSEG_PREP}"
    ),
    "ade": (
        "Download ADEChallengeData2016.zip (the SceneParsing benchmark) and extract it so that "
        f"ADEChallengeData2016/{{images,annotations}}/validation exist. See {_MMSEG_PREP}"
    ),
    "city": (
        "Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from cityscapes-dataset.com and create "
        "*_gtFine_labelTrainIds.png with mmseg's tools/dataset_converters/cityscapes.py (uses cityscapesscripts). "
        f"See {_MMSEG_PREP}"
    ),
    "shapes": (
        "Export the synthetic shapes world in VOC layout (JPEGImages/, SegmentationClass/, "
        "ImageSets/Segmentation/{train,val,test}.txt) from a source checkout's root: "
        "python -c \"from research.shapes.world import export_voc; export_voc('shapes_voc')\""
    ),
}
