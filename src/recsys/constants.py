"""Names shared by every module: the REES46 raw schema, the seed's encoding, dense index names."""

#: Header of the REES46 "eCommerce behavior data from multi category store" CSV files.
RAW_COLUMNS = (
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
)
#: Columns the kit reads (``user_session`` is never needed, so it is never parsed).
READ_COLUMNS = RAW_COLUMNS[:-1]
#: Integer id columns: must be present and all digits, else the row is malformed.
ID_COLUMNS = ("product_id", "category_id", "user_id")
#: ``event_time`` format in the REES46 files.
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"

#: The seed's encoding (``event_type_digit``); anything else (``view`` and unknown types) is 1.
EVENT_DIGITS = {"purchase": 4, "cart": 3, "remove_from_cart": 2, "view": 1}
OTHER_EVENT_DIGIT = 1
KNOWN_EVENT_TYPES = frozenset(EVENT_DIGITS)

#: Dense indices, as in the seed.
USER = "user"
ITEM = "item"
USER_ID = "user_id"
PRODUCT_ID = "product_id"
LABEL = "event_type_digit"

#: The seed's distribution quantiles (events per user / per product).
QUANTILES = (0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 1)

DEFAULT_MIN_USER_EVENTS = 5
DEFAULT_MIN_PRODUCT_EVENTS = 5
DEFAULT_SEED = 42
