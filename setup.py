from setuptools import find_packages, setup


def readme() -> str:
    with open('README.md', encoding='utf-8') as f:
        return f.read()


setup(
    name='rdprune_mm',
    version='0.1.0',
    description='Rate-distortion optimal pruning of MMDetection3D detectors',
    long_description=readme(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['rdprune_mm', 'rdprune_mm.*']),
    python_requires='>=3.9',
    install_requires=[
        'torch>=2.0',
        'numpy',
        'mmengine>=0.10.7,<1.0',
        'mmcv>=2.1.0,<2.2.0',
        'mmdet>=3.3.0,<3.4.0',
        'mmdet3d>=1.4.0,<1.5.0',
        'spconv>=2.3.8',
    ],
    extras_require=dict(tests=['pytest']),
    license='Apache License 2.0',
)
