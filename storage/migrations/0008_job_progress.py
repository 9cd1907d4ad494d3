from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0007_patients')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Job',
            name='position',
            field=fields.BigIntField(default=0, db_default=0),
        ),
        ops.AddField(
            model_name='Job',
            name='size',
            field=fields.BigIntField(default=0, db_default=0),
        ),
    ]
