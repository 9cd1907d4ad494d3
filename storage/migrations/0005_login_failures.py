from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0004_teams')]

    initial = False

    operations = [
        ops.CreateModel(
            name='LoginFailure',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('key_hash', fields.CharField(max_length=64)),
                ('at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'login_failures', 'app': 'models', 'indexes': [Index(fields=['key_hash', 'at'])], 'pk_attr': 'id', 'table_description': 'One failed login, counted for an account and for an address (keyed hashes, not'},
            bases=['Model'],
        ),
    ]
